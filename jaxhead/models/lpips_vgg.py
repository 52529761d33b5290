"""LPIPS with the VGG16 trunk (v0.1), in the two forms the GAN-inversion code uses.

Both forms are one network: torchvision's ``vgg16().features`` up to ``relu5_3`` and the
``lpips`` package's five non-negative per-channel "lin" weights. Pure functions, NHWC::

    params = load_lpips_vgg("checkpoints/lpips_vgg")      # either converter writes this
    d = lpips_vgg(params, x, y)                # lpips package: x, y [B, H, W, 3] in [-1, 1] -> [B]
    f = vgg16_lpips_features(params, img)      # NVIDIA vgg16.pt, return_lpips=True:
                                               #   img [B, H, W, 3] in [0, 255] -> [B, F]
    d = jnp.sum(jnp.square(f(x) - f(y)), -1)   # = LPIPS distance of the two images

``lpips_vgg`` is ``lpips.LPIPS(net="vgg", version="0.1")`` in eval mode: LPIPS' ScalingLayer,
the five ReLU stages, unit-normalisation over channels (``f / (||f|| + 1e-10)``), squared
difference weighted per channel by ``lin_k``, averaged over space, summed over stages.

``vgg16_lpips_features`` is the TorchScript ``vgg16.pt`` of StyleGAN2-ADA (used by the
StyleGAN2-ADA / EG3D / PanoHead projectors as ``vgg16(img, resize_images=False,
return_lpips=True)``): the same network fed ``img / 127.5 - 1``, each stage's unit-normalised
features multiplied by ``sqrt(lin_k / (H_k * W_k))`` and flattened (NCHW order) and
concatenated, so that the sum of squared differences of two images' vectors is their LPIPS
distance (torch-fidelity's tests check that identity against the archive within 1e-5).

Channel widths are read from the parameters, so small random-weight trunks (tests) use the
same code; the released network has widths (64, 128, 256, 512, 512).

Params layout: ``{"net": {"conv0".."conv12": {"weight": [3, 3, cin, cout], "bias": [cout]}},
"lin": {"lin0".."lin4": [c_k]}}``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Params = dict[str, Any]

# Convolutions per stage (torchvision vgg16 "D" configuration); a 2x2/2 max-pool precedes
# every stage but the first. The LPIPS taps are the last ReLU of each stage.
STAGE_CONVS = (2, 2, 3, 3, 3)
WIDTHS = (64, 128, 256, 512, 512)
# torchvision ``features`` index of each of the 13 convolutions.
TV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# LPIPS' ScalingLayer (inputs in [-1, 1]).
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
EPS = 1e-10
CONVERT_HINT = ("python -m convert_weights.lpips --net vgg --vgg vgg16-397923af.pth "
                "--lin <site-packages>/lpips/weights/v0.1/vgg.pth DST, or "
                "python -m convert_weights.vgg16_nvidia vgg16.pt DST")


def conv_channels(widths: Sequence[int] = WIDTHS) -> list[tuple[int, int]]:
    """(in, out) channels of the 13 convolutions for the stage ``widths``."""
    out, cin = [], 3
    for n, w in zip(STAGE_CONVS, widths, strict=True):
        for _ in range(n):
            out.append((cin, w))
            cin = w
    return out


def param_shapes(widths: Sequence[int] = WIDTHS) -> Params:
    """Expected shapes of every parameter for the stage ``widths``."""
    net = {f"conv{i}": {"weight": (3, 3, cin, cout), "bias": (cout,)}
           for i, (cin, cout) in enumerate(conv_channels(widths))}
    return {"net": net, "lin": {f"lin{k}": (w,) for k, w in enumerate(widths)}}


def widths_of(params: Params) -> tuple[int, ...]:
    """Stage widths of a parameter tree (from its lin weights)."""
    return tuple(int(params["lin"][f"lin{k}"].shape[0]) for k in range(len(STAGE_CONVS)))


def random_params(key: Array, widths: Sequence[int] = WIDTHS) -> Params:
    """He-normal convolutions, small biases, non-negative lin weights (tests, benchmarks)."""
    from jaxhead.models.lpips import random_params_for

    return random_params_for(param_shapes(widths), key)


def vgg16_stages(net: Params, x: Array) -> list[Array]:
    """The five tapped ReLU outputs (relu1_2 .. relu5_3). ``x``: [B, H, W, 3], already scaled
    by LPIPS' ScalingLayer."""
    feats, h, i = [], x, 0
    for stage, n in enumerate(STAGE_CONVS):
        if stage:
            h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        for _ in range(n):
            w = net[f"conv{i}"]["weight"].astype(h.dtype)
            h = lax.conv_general_dilated(h, w, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jax.nn.relu(h + net[f"conv{i}"]["bias"].astype(h.dtype))
            i += 1
        feats.append(h)
    return feats


def _unit_normalize(f: Array) -> Array:
    """``f / (||f||_channels + 1e-10)``, with a finite gradient where a pixel's features are
    all zero (``sqrt`` at 0 would give NaN)."""
    s = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    pos = s > 0
    norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)
    return f / (norm + EPS)


def _scaled(x: Array) -> Array:
    """[-1, 1] images -> LPIPS' ScalingLayer output."""
    return (x - SHIFT) / SCALE


def _check_images(x: Array, what: str) -> None:
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{what} expects [B, H, W, 3] images, got shape {x.shape}")


def lpips_vgg_layers(params: Params, x: Array, y: Array) -> Array:
    """Per-stage LPIPS(vgg) terms ``[5, B]``; ``x``, ``y``: [B, H, W, 3] in [-1, 1]
    (H, W >= 16: four 2x2 pools)."""
    if x.shape != y.shape:
        raise ValueError(f"lpips_vgg expects two images of one shape, got {x.shape} and "
                         f"{y.shape}")
    _check_images(x, "lpips_vgg")
    b = x.shape[0]
    feats = vgg16_stages(params["net"], _scaled(jnp.concatenate([x, y])))
    out = []
    for k, f in enumerate(feats):
        f = _unit_normalize(f)
        d = jnp.square(f[:b] - f[b:])
        out.append(jnp.mean(d @ params["lin"][f"lin{k}"].astype(d.dtype), axis=(1, 2)))
    return jnp.stack(out)


def lpips_vgg(params: Params, x: Array, y: Array) -> Array:
    """LPIPS(vgg, v0.1) distance per image ``[B]`` (the ``lpips`` package's form)."""
    return jnp.sum(lpips_vgg_layers(params, x, y), axis=0)


def vgg16_lpips_features(params: Params, img: Array) -> Array:
    """NVIDIA ``vgg16.pt`` with ``return_lpips=True, resize_images=False``.

    ``img``: [B, H, W, 3] RGB in [0, 255] (float). Returns ``[B, F]`` with
    ``F = sum_k C_k H_k W_k`` (stage-major, then NCHW order within a stage), such that
    ``sum((f(a) - f(b))**2, -1)`` is LPIPS(vgg) of the two images.
    """
    _check_images(img, "vgg16_lpips_features")
    feats = vgg16_stages(params["net"], _scaled(img / 127.5 - 1.0))
    out = []
    for k, f in enumerate(feats):
        b, h, w, _ = f.shape
        wk = jnp.sqrt(jnp.maximum(params["lin"][f"lin{k}"], 0.0) / (h * w)).astype(f.dtype)
        f = _unit_normalize(f) * wk
        out.append(jnp.transpose(f, (0, 3, 1, 2)).reshape(b, -1))
    return jnp.concatenate(out, axis=1)


def area_downsample(x: Array, size: int) -> Array:
    """``F.interpolate(x, size, mode="area")`` for an integer factor: mean of each
    ``f x f`` block. ``x``: [B, H, W, C] with H = W a multiple of ``size``."""
    b, h, w, c = x.shape
    if h != w or h % size:
        raise ValueError(f"area_downsample needs a square image whose side is a multiple of "
                         f"{size}, got {h}x{w}")
    f = h // size
    if f == 1:
        return x
    return jnp.mean(x.reshape(b, size, f, size, f, c), axis=(2, 4))


def load_lpips_vgg(directory: str | os.PathLike, *, verify: bool = True) -> Params:
    """Converted LPIPS-VGG16 params from ``directory`` (``params.safetensors`` +
    ``config.json``, written by either converter). Raises ``MissingWeightsError`` with both
    convert commands when the directory does not exist."""
    from jaxhead.errors import DataError
    from jaxhead.utils.params_io import check_tree, load_params

    params, config = load_params(directory, what="LPIPS-VGG16", convert_hint=CONVERT_HINT,
                                 verify=verify)
    if config.get("net") != "vgg16":
        raise DataError(f"{directory}: not LPIPS-VGG16 weights (config net is "
                        f"{config.get('net')!r}); convert with: {CONVERT_HINT}")
    widths = tuple(int(w) for w in config.get("widths", WIDTHS))
    check_tree(params, param_shapes(widths), what=f"LPIPS-VGG16 params in {directory}")
    return jax.tree.map(jnp.asarray, params)


__all__ = ["area_downsample", "conv_channels", "load_lpips_vgg", "lpips_vgg",
           "lpips_vgg_layers", "param_shapes", "random_params", "vgg16_lpips_features",
           "vgg16_stages", "widths_of"]
