"""LPIPS (Zhang et al. 2018) with the AlexNet trunk, version 0.1: the perceptual distance the
official stylization code adds to the single-view loss (weight 0.05).

Pure functions over a params dict, images NHWC::

    params = load_lpips("checkpoints/lpips_alex")   # python -m convert_weights.lpips ...
    d = lpips(params, x, y)                          # x, y [B, H, W, 3] in [-1, 1] -> [B]

Computation (as the ``lpips`` package's ``LPIPS(net="alex", version="0.1")`` in eval mode):
inputs are shifted/scaled per channel, passed through AlexNet's five conv+ReLU stages (max-pool
3x3/2 after the first two), each stage's features are unit-normalized over channels, the squared
difference is weighted per channel by a non-negative 1x1 "lin" layer, averaged over space and
summed over the five stages.

Params layout: ``{"net": {"conv0".."conv4": {"weight": [kh, kw, cin, cout], "bias": [cout]}},
"lin": {"lin0".."lin4": [c]}}``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Params = dict[str, Any]

# (in, out, kernel, stride, padding) of AlexNet's five convolutions (torchvision ``features``
# indices 0, 3, 6, 8, 10); a 3x3/2 max-pool follows the ReLUs of the first two.
ALEXNET_CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1),
                 (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))
POOL_AFTER = (0, 1)
# Input normalization of LPIPS' ScalingLayer (inputs in [-1, 1]).
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
EPS = 1e-10
CONVERT_HINT = ("python -m convert_weights.lpips --alexnet alexnet-owt-7be5be79.pth "
                "--lin <site-packages>/lpips/weights/v0.1/alex.pth DST")


def param_shapes() -> Params:
    """Expected shapes of every parameter (for checking converted files)."""
    net = {f"conv{i}": {"weight": (k, k, cin, cout), "bias": (cout,)}
           for i, (cin, cout, k, _, _) in enumerate(ALEXNET_CONVS)}
    lin = {f"lin{i}": (c[1],) for i, c in enumerate(ALEXNET_CONVS)}
    return {"net": net, "lin": lin}


def random_params(key: Array) -> Params:
    """Random AlexNet (He-normal convs) and non-negative lin weights: a stand-in for the demo."""
    return random_params_for(param_shapes(), key, n_keys=16)


def random_params_for(shapes: Params, key: Array, n_keys: int | None = None) -> Params:
    """He-normal convolutions, small biases and non-negative lin weights for a LPIPS
    ``param_shapes`` tree (any trunk); ``n_keys``: how many keys ``key`` is split into."""
    n_keys = n_keys or 2 * len(shapes["net"]) + len(shapes["lin"])
    keys = iter(jax.random.split(key, n_keys))
    net = {}
    for name, s in shapes["net"].items():
        kh, kw, cin, _ = s["weight"]
        net[name] = {"weight": jax.random.normal(next(keys), s["weight"]) *
                     np.sqrt(2.0 / (kh * kw * cin)),
                     "bias": 0.01 * jax.random.normal(next(keys), s["bias"])}
    lin = {name: jnp.abs(jax.random.normal(next(keys), s)) / s[0]
           for name, s in shapes["lin"].items()}
    return {"net": net, "lin": lin}


def alexnet_features(net: Params, x: Array) -> list[Array]:
    """The five ReLU outputs of AlexNet's trunk. ``x``: [B, H, W, 3] already scaled."""
    feats = []
    h = x
    for i, (_, _, _, stride, pad) in enumerate(ALEXNET_CONVS):
        if i - 1 in POOL_AFTER:
            h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")
        w = net[f"conv{i}"]["weight"].astype(h.dtype)
        h = lax.conv_general_dilated(h, w, (stride, stride), ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(h + net[f"conv{i}"]["bias"].astype(h.dtype))
        feats.append(h)
    return feats


def _unit_normalize(f: Array) -> Array:
    """``f / (||f||_channels + 1e-10)`` with a finite gradient where a pixel's features are all
    zero (where ``sqrt`` at 0 would give NaN)."""
    s = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    pos = s > 0
    norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)
    return f / (norm + EPS)


def lpips_layers(params: Params, x: Array, y: Array, *, normalize: bool = False) -> Array:
    """Per-stage LPIPS terms, [5, B]. ``x``, ``y``: [B, H, W, 3] in [-1, 1] (``normalize=True``:
    in [0, 1]); H, W >= 32 or so (AlexNet's stride-4 11x11 stem and two pools)."""
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"lpips expects two [B, H, W, 3] images of one shape, got {x.shape} "
                         f"and {y.shape}")
    if normalize:
        x, y = 2 * x - 1, 2 * y - 1
    xy = (jnp.concatenate([x, y]) - SHIFT) / SCALE
    feats = alexnet_features(params["net"], xy)
    b = x.shape[0]
    out = []
    for i, f in enumerate(feats):
        f = _unit_normalize(f)
        d = jnp.square(f[:b] - f[b:])
        out.append(jnp.mean(d @ params["lin"][f"lin{i}"].astype(d.dtype), axis=(1, 2)))
    return jnp.stack(out)


def lpips(params: Params, x: Array, y: Array, *, normalize: bool = False) -> Array:
    """LPIPS distance per image, [B] (see :func:`lpips_layers`)."""
    return jnp.sum(lpips_layers(params, x, y, normalize=normalize), axis=0)


def load_lpips(directory: str | os.PathLike, *, verify: bool = True) -> Params:
    """Converted LPIPS(alex) params from ``directory`` (``params.safetensors`` +
    ``config.json``, written by ``python -m convert_weights.lpips``). ``verify``: check the
    content hash and finiteness (``params_io.load_params``)."""
    from jaxhead.errors import DataError
    from jaxhead.utils.params_io import check_tree, load_params

    params, config = load_params(directory, what="LPIPS(alex)", convert_hint=CONVERT_HINT,
                                 verify=verify)
    if config.get("net") != "alex":
        raise DataError(f"{directory}: only LPIPS with net='alex' is supported, config says "
                        f"{config.get('net')!r}")
    check_tree(params, param_shapes(), what=f"LPIPS params in {directory}")
    return jax.tree.map(jnp.asarray, params)


__all__ = ["ALEXNET_CONVS", "alexnet_features", "load_lpips", "lpips", "lpips_layers",
           "param_shapes", "random_params"]
