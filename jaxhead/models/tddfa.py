"""3DDFA_V2's parameter regressor, MobileNet v1 (``models/mobilenet_v1.py`` of
cleardusk/3DDFA_V2; weights ``weights/mb1_120x120.pth`` and ``weights/mb05_120x120.pth``), as
pure functions over a params dict. NHWC.

Input: 120x120 crops of a face's ROI (:mod:`jaxhead.face.roi`), BGR as OpenCV reads them,
normalised by :func:`normalize` to ``(x - 127.5) / 128``. Output: 62 normalised 3DMM
parameters; :func:`denormalize` applies the released mean / std (``configs/
param_mean_std_62d_120x120.pkl``) giving 12 pose (a 3x4 affine camera ``P``, row-major), 40
shape and 10 expression coefficients of the BFM (:mod:`jaxhead.face.bfm`).

Architecture (``MobileNet(widen_factor, num_classes=62)``, ReLU): conv1 3x3/2 + BN + ReLU, then
13 depth-wise separable blocks (``DepthWiseBlock``: 3x3 depth-wise conv + BN + ReLU, 1x1 conv +
BN + ReLU) ``dw2_1 .. dw6`` with widths ``int(c * widen_factor)`` for c in 32, 64, 128, ...,
1024, global average pool, ``fc`` to 62. ``widen_factor`` 1.0 is ``mb1``, 0.5 ``mb05``.

Params mirror the PyTorch names (``.`` -> ``/``; the checkpoint's ``module.`` prefix dropped and
its ``fc_param`` renamed ``fc``, as the reference's loader does)::

    conv1/weight [3, 3, 3, C0]     bn1/{weight, bias, running_mean, running_var}
    dw2_1/conv_dw/weight [3, 3, 1, C]   dw2_1/bn_dw/...   dw2_1/conv_sep/weight [1, 1, C, C']
    dw2_1/bn_sep/...   ...   fc/weight [C_last, 62]   fc/bias [62]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxhead.models.iresnet import BN_EPS

Array = jax.Array
Params = dict[str, Any]

INPUT_SIZE = 120
NUM_PARAMS = 62
ARCHS = {"mb1": 1.0, "mb05": 0.5}
CHECKPOINTS = {"mb1": "weights/mb1_120x120.pth", "mb05": "weights/mb05_120x120.pth"}
# (block name, in width, out width, stride) before the widen factor.
BLOCKS = (("dw2_1", 32, 64, 1), ("dw2_2", 64, 128, 2), ("dw3_1", 128, 128, 1),
          ("dw3_2", 128, 256, 2), ("dw4_1", 256, 256, 1), ("dw4_2", 256, 512, 2),
          ("dw5_1", 512, 512, 1), ("dw5_2", 512, 512, 1), ("dw5_3", 512, 512, 1),
          ("dw5_4", 512, 512, 1), ("dw5_5", 512, 512, 1), ("dw5_6", 512, 1024, 2),
          ("dw6", 1024, 1024, 1))
_BN = ("weight", "bias", "running_mean", "running_var")


def param_shapes(widen_factor: float, num_params: int = NUM_PARAMS) -> Params:
    """Shapes of every parameter of ``MobileNet(widen_factor, num_params)``."""
    c0 = int(32 * widen_factor)
    out: Params = {"conv1": {"weight": (3, 3, 3, c0)}, "bn1": {k: (c0,) for k in _BN}}
    for name, cin, cout, _ in BLOCKS:
        ci, co = int(cin * widen_factor), int(cout * widen_factor)
        out[name] = {"conv_dw": {"weight": (3, 3, 1, ci)}, "bn_dw": {k: (ci,) for k in _BN},
                     "conv_sep": {"weight": (1, 1, ci, co)}, "bn_sep": {k: (co,) for k in _BN}}
    out["fc"] = {"weight": (int(1024 * widen_factor), num_params), "bias": (num_params,)}
    return out


def widen_factor_of(params: Params) -> float:
    """The widen factor of a parameter tree (conv1 has ``int(32 * widen_factor)`` filters)."""
    return params["conv1"]["weight"].shape[-1] / 32


def _bn(p: Params, x: Array) -> Array:
    scale = p["weight"] * lax.rsqrt(p["running_var"] + BN_EPS)
    return (x - p["running_mean"]) * scale + p["bias"]


def _conv(w: Array, x: Array, stride: int, pad: int, groups: int = 1) -> Array:
    return lax.conv_general_dilated(x, w.astype(x.dtype), (stride, stride),
                                    ((pad, pad), (pad, pad)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=groups)


def forward(params: Params, x: Array) -> Array:
    """Normalised crops ``x`` [B, 120, 120, 3] -> normalised parameters [B, 62]."""
    x = jax.nn.relu(_bn(params["bn1"], _conv(params["conv1"]["weight"], x, 2, 1)))
    for name, _, _, stride in BLOCKS:
        p = params[name]
        x = _conv(p["conv_dw"]["weight"], x, stride, 1, groups=x.shape[-1])
        x = jax.nn.relu(_bn(p["bn_dw"], x))
        x = jax.nn.relu(_bn(p["bn_sep"], _conv(p["conv_sep"]["weight"], x, 1, 0)))
    x = jnp.mean(x, axis=(1, 2))
    return x @ params["fc"]["weight"] + params["fc"]["bias"]


def normalize(crops_bgr: Array) -> Array:
    """BGR crops in [0, 255] -> the network's input ``(x - 127.5) / 128``."""
    return (jnp.asarray(crops_bgr, jnp.float32) - 127.5) / 128.0


def denormalize(params_norm: Array, mean: Array, std: Array) -> Array:
    """The network's output [..., 62] -> 3DMM parameters ``p * std + mean`` (reference order)."""
    return params_norm * std + mean


def random_params(widen_factor: float = 0.5, seed: int = 0) -> Params:
    """Random weights of the right shapes (He-normal convs, BatchNorms near identity): tests."""
    rng = np.random.default_rng(seed)

    def init(tree: Params, parent: str = "") -> Params:
        out: Params = {}
        for k, s in tree.items():
            if isinstance(s, dict):
                out[k] = init(s, k)
            elif parent.startswith("bn") and k in ("weight", "running_var"):
                out[k] = rng.uniform(0.5, 1.5, s)
            elif len(s) == 1:
                out[k] = 0.1 * rng.standard_normal(s)
            else:
                out[k] = rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[:-1]))
            if not isinstance(s, dict):
                out[k] = jnp.asarray(out[k], jnp.float32)
        return out

    return init(param_shapes(widen_factor))
