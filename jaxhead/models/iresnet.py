"""insightface's ArcFace network, ``arcface_torch``'s ``iresnet`` (``iresnet50``: the
``w600k_r50.onnx`` of the ``buffalo_l`` pack), as pure functions over a params dict. NHWC.

Input: 112x112 aligned faces, RGB, in [-1, 1]. insightface's ``ArcFaceONNX.get_feat`` reads
BGR images (OpenCV) and calls ``cv2.dnn.blobFromImages(img, 1/127.5, (112, 112), (127.5,) * 3,
swapRB=True)``: the network sees RGB and ``(x - 127.5) / 127.5``, which is ``2 x - 1`` on
[0, 1] images. Output: the raw 512-d embedding (``features``, before any normalisation).

Architecture: a 3x3 stem conv (stride 1) + BN + PReLU, four stages of "improved residual"
blocks (``layers`` = 3, 4, 14, 3 for iresnet50; widths 64, 128, 256, 512), each block
``BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv (stride) -> BN`` plus the input, which goes
through a strided 1x1 conv + BN in the first block of a stage (stride 2 there: 112 -> 7 px),
then BN, flatten, fc to 512 and a BatchNorm1d (``features``).

Params are the *inference form* of the network, which is what insightface's ONNX export holds
(``torch.onnx.export`` folds every BatchNorm that follows a conv into that conv): a BatchNorm
that follows a conv or the fc is folded into it (conv / fc get a bias); those that precede a
conv (each block's ``bn1``) or the fc (``bn2``) stay BatchNorms (they cannot be folded through
a conv's zero padding). Names mirror the PyTorch attributes::

    conv1 {weight [3, 3, 3, C0], bias}            # conv1 + bn1
    prelu {weight [C0]}
    layer1/0/bn1 {weight, bias, running_mean, running_var}
    layer1/0/conv1 {weight [3, 3, Cin, C], bias}  # conv1 + bn2
    layer1/0/prelu {weight [C]}
    layer1/0/conv2 {weight [3, 3, C, C], bias}    # conv2 + bn3
    layer1/0/downsample {weight [1, 1, Cin, C], bias}  # downsample.0 + downsample.1
    ...
    bn2 {weight, bias, running_mean, running_var}
    fc {weight [7, 7, C, D], bias [D]}            # fc + features; rows in NHWC flatten order

The layers below (conv, BatchNorm, PReLU, the flatten-fc head) are shared with
:mod:`jaxhead.models.ir_se`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax import lax

if TYPE_CHECKING:  # the config lives in jaxhead.models.arcface, which imports this module
    from jaxhead.models.arcface_config import ArcFaceConfig

Array = jax.Array
Params = dict[str, Any]

BN_EPS = 1e-5  # every BatchNorm of both networks (PyTorch's default)
FINAL_SIZE = 7  # four stride-2 stages: 112 px -> 7 px, flattened into the fc


def conv(p: Params, x: Array, stride: int = 1, pad: int = 0) -> Array:
    """NHWC conv with HWIO ``p["weight"]`` and, if present, ``p["bias"]``."""
    y = lax.conv_general_dilated(x, p["weight"].astype(x.dtype), (stride, stride),
                                 ((pad, pad), (pad, pad)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["bias"].astype(y.dtype) if "bias" in p else y


def batch_norm(p: Params, x: Array) -> Array:
    """Eval-mode BatchNorm over the last axis (running statistics, eps 1e-5)."""
    scale = p["weight"] * lax.rsqrt(p["running_var"] + BN_EPS)
    return (x - p["running_mean"]) * scale + p["bias"]


def prelu(p: Params, x: Array) -> Array:
    """PReLU with one slope per channel (last axis)."""
    return jnp.where(x >= 0, x, p["weight"] * x)


def flatten_fc(p: Params, x: Array) -> Array:
    """``[N, 7, 7, C]`` -> ``[N, D]``: PyTorch's flatten + Linear, with the fc weight stored as
    ``[7, 7, C, D]`` (the converter permutes PyTorch's NCHW flatten order)."""
    return jnp.einsum("nhwc,hwcd->nd", x, p["weight"].astype(x.dtype)) + p["bias"]


def bn_shapes(c: int) -> Params:
    return {k: (c,) for k in ("weight", "bias", "running_mean", "running_var")}


def _conv_shapes(k: int, cin: int, cout: int) -> Params:
    return {"weight": (k, k, cin, cout), "bias": (cout,)}


def param_shapes(cfg: ArcFaceConfig) -> Params:
    """Expected shapes of every parameter (inference form, see the module docstring)."""
    out: Params = {"conv1": _conv_shapes(3, 3, cfg.stem), "prelu": {"weight": (cfg.stem,)}}
    cin = cfg.stem
    for s, (n, c) in enumerate(zip(cfg.layers, cfg.widths, strict=True)):
        stage = {}
        for i in range(n):
            blk = {"bn1": bn_shapes(cin), "conv1": _conv_shapes(3, cin, c),
                   "prelu": {"weight": (c,)}, "conv2": _conv_shapes(3, c, c)}
            if i == 0:
                blk["downsample"] = _conv_shapes(1, cin, c)
            stage[str(i)] = blk
            cin = c
        out[f"layer{s + 1}"] = stage
    out["bn2"] = bn_shapes(cin)
    out["fc"] = {"weight": (FINAL_SIZE, FINAL_SIZE, cin, cfg.embedding_dim),
                 "bias": (cfg.embedding_dim,)}
    return out


def block(p: Params, x: Array, stride: int) -> Array:
    """One ``IBasicBlock`` (BatchNorms after convs folded)."""
    h = conv(p["conv1"], batch_norm(p["bn1"], x), pad=1)
    h = conv(p["conv2"], prelu(p["prelu"], h), stride=stride, pad=1)
    return h + (conv(p["downsample"], x, stride=stride) if "downsample" in p else x)


def forward(w: Params, cfg: ArcFaceConfig, x: Array) -> Array:
    """``[N, 112, 112, 3]`` RGB in [-1, 1] -> raw ``[N, embedding_dim]`` embeddings."""
    h = prelu(w["prelu"], conv(w["conv1"], x, pad=1))
    for s, n in enumerate(cfg.layers):
        stage = w[f"layer{s + 1}"]
        for i in range(n):
            h = block(stage[str(i)], h, 2 if i == 0 else 1)
    return flatten_fc(w["fc"], batch_norm(w["bn2"], h))


__all__ = ["BN_EPS", "FINAL_SIZE", "batch_norm", "block", "bn_shapes", "conv", "flatten_fc",
           "forward", "param_shapes", "prelu"]
