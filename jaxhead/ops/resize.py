"""Image resizing with PyTorch ``F.interpolate`` semantics, as dense separable matrices.

``resize_matrix`` builds the ``[out, in]`` interpolation matrix on the host (numpy, float64) for
bilinear interpolation with ``align_corners`` True/False and with ``antialias=True`` (PyTorch's
triangle-filter path, which widens the support by the scale factor when down-sampling). Applying
the matrices along H and W is exact, differentiable and fast for the small images we resize.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def resize_matrix(in_size: int, out_size: int, *, align_corners: bool = False,
                  antialias: bool = False) -> np.ndarray:
    """``[out_size, in_size]`` float32 matrix M such that ``y = M @ x`` resizes a 1-D signal."""
    m = np.zeros((out_size, in_size), np.float64)
    if antialias and not align_corners:
        scale = in_size / out_size
        support = scale if scale >= 1.0 else 1.0  # interp_size / 2 * max(scale, 1)
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(out_size):
            center = scale * (i + 0.5)
            xmin = max(int(center - support + 0.5), 0)
            xmax = min(int(center + support + 0.5), in_size)
            j = np.arange(xmin, xmax)
            w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) * invscale))
            if w.sum() != 0:
                w = w / w.sum()
            m[i, xmin:xmax] = w
        return m.astype(np.float32)
    # Source coordinates in float32, as PyTorch's kernels compute them.
    f32 = np.float32
    i = np.arange(out_size, dtype=f32)
    if align_corners:
        scale = f32((in_size - 1) / (out_size - 1)) if out_size > 1 else f32(0.0)
        src = i * scale
    else:
        scale = f32(in_size / out_size)
        src = np.maximum(scale * (i + f32(0.5)) - f32(0.5), f32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    l1 = (src - i0.astype(f32)).astype(f32)
    l0 = f32(1.0) - l1
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), l0)
    np.add.at(m, (rows, i1), l1)
    return m.astype(np.float32)


def resize_bilinear(x: jax.Array, size: tuple[int, int] | int, *, align_corners: bool = False,
                    antialias: bool = False) -> jax.Array:
    """Bilinear resize of ``[N, H, W, C]`` to ``[N, h, w, C]`` (``F.interpolate`` semantics)."""
    if isinstance(size, int):
        size = (size, size)
    h, w = size
    if (x.shape[1], x.shape[2]) == (h, w):
        return x
    mh = jnp.asarray(resize_matrix(x.shape[1], h, align_corners=align_corners,
                                   antialias=antialias), x.dtype)
    mw = jnp.asarray(resize_matrix(x.shape[2], w, align_corners=align_corners,
                                   antialias=antialias), x.dtype)
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=hp)
    return jnp.einsum("pw,nowc->nopc", mw, x, precision=hp)
