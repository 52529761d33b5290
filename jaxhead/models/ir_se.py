"""TreB1eN's IR-SE ``Backbone`` (``Backbone(50, drop_ratio, mode="ir_se")``): the IR-SE50
identity network of pSp / e4e / PTI (``model_ir_se50.pth``), as pure functions. NHWC.

Input: 112x112 aligned faces, RGB, in [-1, 1] (pSp's ``IDLoss`` feeds its generator's RGB
output in [-1, 1]; TreB1eN's training pipeline normalised with mean = std = 0.5). Output: the
raw 512-d embedding, *before* the ``l2_norm`` that TreB1eN's / pSp's ``forward`` applies (the
metric functions normalise).

Architecture: ``input_layer`` (3x3 conv, BN, PReLU), ``body`` of ``bottleneck_IR_SE`` units in
four stages (3, 4, 14, 3 units of widths 64, 128, 256, 512; the first unit of a stage has
stride 2), ``output_layer`` (BN, Dropout, Flatten, Linear to 512, BatchNorm1d). A unit is
``res_layer`` = BN -> 3x3 conv -> PReLU -> 3x3 conv (stride) -> BN -> SE (global average,
1x1 conv to C/16, ReLU, 1x1 conv to C, sigmoid, scale), plus ``shortcut_layer``: a strided
1x1 conv + BN where the width changes, else ``MaxPool2d(1, stride)`` (plain subsampling).
Differs from insightface's iresnet (:mod:`jaxhead.models.iresnet`) in: no BN between the first
conv and the PReLU, the SE module, the subsampling shortcut, and the stride-2 first unit of
stage 1 having no shortcut weights.

Params mirror the PyTorch state dict (the converter only transposes): ``input_layer/0/weight``
(HWIO), ``input_layer/1/{weight,bias,running_mean,running_var}``, ``input_layer/2/weight``,
``body/<i>/res_layer/{0..5}/...`` (``5/fc1/weight`` ``[1, 1, C, C/16]``), ``body/<i>/
shortcut_layer/{0,1}/...``, ``output_layer/0/...`` (BN2d), ``output_layer/3/{weight [7, 7, C,
D], bias}`` (Linear, rows in NHWC flatten order), ``output_layer/4/...`` (BatchNorm1d).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jaxhead.models.iresnet import FINAL_SIZE, batch_norm, bn_shapes, conv, flatten_fc, prelu

if TYPE_CHECKING:
    from jaxhead.models.arcface_config import ArcFaceConfig

Array = jax.Array
Params = dict[str, Any]


def units(cfg: ArcFaceConfig) -> list[tuple[int, int, int]]:
    """``(in_channels, depth, stride)`` of every body unit, in order (TreB1eN's
    ``get_blocks``)."""
    out, cin = [], cfg.stem
    for n, c in zip(cfg.layers, cfg.widths, strict=True):
        for i in range(n):
            out.append((cin, c, 2 if i == 0 else 1))
            cin = c
    return out


def param_shapes(cfg: ArcFaceConfig) -> Params:
    """Expected shapes of every parameter."""
    r = cfg.se_reduction
    body = {}
    for i, (cin, c, _) in enumerate(units(cfg)):
        unit = {"res_layer": {"0": bn_shapes(cin), "1": {"weight": (3, 3, cin, c)},
                              "2": {"weight": (c,)}, "3": {"weight": (3, 3, c, c)},
                              "4": bn_shapes(c),
                              "5": {"fc1": {"weight": (1, 1, c, c // r)},
                                    "fc2": {"weight": (1, 1, c // r, c)}}}}
        if cin != c:
            unit["shortcut_layer"] = {"0": {"weight": (1, 1, cin, c)}, "1": bn_shapes(c)}
        body[str(i)] = unit
    c = cfg.widths[-1]
    return {"input_layer": {"0": {"weight": (3, 3, 3, cfg.stem)}, "1": bn_shapes(cfg.stem),
                            "2": {"weight": (cfg.stem,)}},
            "body": body,
            "output_layer": {"0": bn_shapes(c),
                             "3": {"weight": (FINAL_SIZE, FINAL_SIZE, c, cfg.embedding_dim),
                                   "bias": (cfg.embedding_dim,)},
                             "4": bn_shapes(cfg.embedding_dim)}}


def squeeze_excite(p: Params, x: Array) -> Array:
    """``SEModule``: scale each channel by sigmoid(fc2(relu(fc1(mean over space))))."""
    s = jnp.mean(x, axis=(1, 2))
    s = jax.nn.relu(s @ p["fc1"]["weight"][0, 0].astype(x.dtype))
    s = jax.nn.sigmoid(s @ p["fc2"]["weight"][0, 0].astype(x.dtype))
    return x * s[:, None, None, :]


def unit(p: Params, x: Array, stride: int) -> Array:
    """One ``bottleneck_IR_SE``."""
    r = p["res_layer"]
    h = conv(r["1"], batch_norm(r["0"], x), pad=1)
    h = batch_norm(r["4"], conv(r["3"], prelu(r["2"], h), stride=stride, pad=1))
    h = squeeze_excite(r["5"], h)
    if "shortcut_layer" in p:
        s = p["shortcut_layer"]
        short = batch_norm(s["1"], conv(s["0"], x, stride=stride))
    else:
        short = x[:, ::stride, ::stride]  # MaxPool2d(kernel 1, stride)
    return h + short


def forward(w: Params, cfg: ArcFaceConfig, x: Array) -> Array:
    """``[N, 112, 112, 3]`` RGB in [-1, 1] -> raw ``[N, embedding_dim]`` embeddings (Dropout
    is the identity in eval mode)."""
    i = w["input_layer"]
    h = prelu(i["2"], batch_norm(i["1"], conv(i["0"], x, pad=1)))
    for k, (_, _, stride) in enumerate(units(cfg)):
        h = unit(w["body"][str(k)], h, stride)
    o = w["output_layer"]
    return batch_norm(o["4"], flatten_fc(o["3"], batch_norm(o["0"], h)))


__all__ = ["forward", "param_shapes", "squeeze_excite", "unit", "units"]
