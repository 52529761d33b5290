"""Image resizing with PyTorch ``F.interpolate`` semantics, as dense separable matrices, and
PIL's antialiased bicubic ``Image.resize`` (CLIP's preprocessing).

``resize_matrix`` builds the ``[out, in]`` interpolation matrix on the host (numpy, float64) for
bilinear interpolation with ``align_corners`` True/False and with ``antialias=True`` (PyTorch's
triangle-filter path, which widens the support by the scale factor when down-sampling). Applying
the matrices along H and W is exact, differentiable and fast for the small images we resize.

``resize_bicubic_pil`` is Pillow's ``Image.resize(size, Image.BICUBIC)`` (``Resample.c``: Keys
cubic with a = -0.5, support widened by the scale factor when down-sampling, taps normalised to
sum to 1, horizontal pass then vertical pass, each clipped to the pixel range). uint8 images go
through Pillow's integer arithmetic (22-bit fixed-point taps, rounding to uint8 after each pass)
and come out bit-identical to Pillow; float images take the same taps in float32 without the
rounding.
"""

from __future__ import annotations

import functools
import math

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


# ----------------------------------------------------------------------------------------------
# Pillow's antialiased bicubic
# ----------------------------------------------------------------------------------------------

_PIL_PRECISION_BITS = 32 - 8 - 2  # Resample.c, 8 bits per channel


def _pil_bicubic_kernel(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def pil_bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` for BICUBIC along one axis.

    Returns ``(index [out, T] int32, weight [out, T] float64, fixed [out, T] int32)``: output
    pixel ``o`` is ``sum_t weight[o, t] * x[index[o, t]]``; unused taps have weight 0 and index
    0; ``fixed`` is the weight as Pillow's 8-bit path stores it (``round(w * 2**22)``, halves
    away from zero). Arithmetic follows Resample.c step by step (double precision, C casts)."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    ss = 1.0 / filterscale
    index = np.zeros((out_size, taps), np.int32)
    weight = np.zeros((out_size, taps), np.float64)
    for o in range(out_size):
        center = (o + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int(): C's truncation toward zero
        xmax = min(int(center + support + 0.5), in_size)
        j = np.arange(xmin, xmax)
        k = _pil_bicubic_kernel((j - center + 0.5) * ss)
        total = k.sum()
        if total != 0.0:
            k = k / total
        index[o, :len(j)] = j
        weight[o, :len(j)] = k
    fixed = np.trunc(weight * (1 << _PIL_PRECISION_BITS) + np.where(weight < 0, -0.5, 0.5))
    return index, weight, fixed.astype(np.int32)


def _pil_pass(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    """One Pillow resampling pass along ``axis`` (1 = H, 2 = W) of ``[N, H, W, C]``."""
    index, weight, fixed = pil_bicubic_taps(x.shape[axis], out_size)
    g = jnp.take(x, jnp.asarray(index), axis=axis)  # axis -> (out, T)
    bshape = (out_size, index.shape[1]) + (1,) * (x.ndim - axis - 1)
    if x.dtype == jnp.int32:  # uint8 pixels widened: Pillow's fixed-point sum, exact in int32
        acc = jnp.sum(g * jnp.asarray(fixed).reshape(bshape), axis=axis + 1)
        acc = acc + (1 << (_PIL_PRECISION_BITS - 1))
        return jnp.clip(jnp.right_shift(acc, _PIL_PRECISION_BITS), 0, 255)
    w = jnp.asarray(weight.astype(np.float32)).reshape(bshape)
    return jnp.clip(jnp.sum(g * w.astype(x.dtype), axis=axis + 1), 0.0, 1.0)


def resize_bicubic_pil(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Pillow's ``Image.resize((w, h), Image.BICUBIC)`` of ``[N, H, W, C]`` to ``[N, h, w, C]``.

    uint8 in -> uint8 out, identical to Pillow. Float in (pixel range [0, 1]) -> float out with
    the same taps and the per-pass clipping to [0, 1], without Pillow's rounding to 8 bits
    (differentiable; within about one 8-bit level of Pillow on the rounded image).
    """
    h, w = size
    is_uint8 = x.dtype == jnp.uint8
    y = x.astype(jnp.int32) if is_uint8 else x
    if x.shape[2] != w:  # Pillow: horizontal pass first, only where the size changes
        y = _pil_pass(y, 2, w)
    if x.shape[1] != h:
        y = _pil_pass(y, 1, h)
    return y.astype(jnp.uint8) if is_uint8 else y
