"""FIR up-sampling and resampled convolution (StyleGAN2's ``upfirdn2d`` / ``conv2d_resample``).

NHWC, pure JAX. Semantics follow the reference (``_ref``) PyTorch implementations:
``upfirdn2d`` = zero-insert upsample, pad (negative = crop), convolve with the flipped filter,
decimate. Only what PanoHead uses is implemented: up-sampling by 2 and plain convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_DN = ("NHWC", "HWIO", "NHWC")


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1), gain: float = 1.0) -> np.ndarray:
    """Separable taps -> normalized 2-D FIR filter ``[fh, fw]`` (sum = ``gain``)."""
    f = np.asarray(taps, dtype=np.float64)
    f = np.outer(f, f) if f.ndim == 1 else f
    f = f / f.sum() * gain
    return f.astype(np.float32)


def upfirdn2d(x: jax.Array, f: np.ndarray, *, up: int = 1, down: int = 1,
              padding: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> jax.Array:
    """Upsample (zero insertion), pad/crop, FIR filter, downsample.

    Args:
      x: ``[N, H, W, C]``.
      f: 2-D filter ``[fh, fw]`` (numpy, a constant).
      padding: ``(x0, x1, y0, y1)`` with respect to the upsampled image; negative crops.
    Returns ``[N, H', W', C]``.
    """
    n, h, w, c = x.shape
    px0, px1, py0, py1 = padding
    if up > 1:
        x = x.reshape(n, h, 1, w, 1, c)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, up - 1), (0, 0), (0, up - 1), (0, 0)))
        x = x.reshape(n, h * up, w * up, c)
    x = jnp.pad(x, ((0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0)), (0, 0)))
    x = x[:, max(-py0, 0): x.shape[1] - max(-py1, 0), max(-px0, 0): x.shape[2] - max(-px1, 0)]
    # Convolution with the flipped filter (the reference calls conv2d, i.e. correlation, with
    # the filter flipped); depthwise over channels.
    fk = (np.asarray(f, np.float32) * (gain ** (f.ndim / 2)))[::-1, ::-1]
    k = jnp.asarray(np.ascontiguousarray(fk), x.dtype)[:, :, None, None]
    k = jnp.tile(k, (1, 1, 1, c))
    x = jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=_DN,
                                     feature_group_count=c)
    if down > 1:
        x = x[:, ::down, ::down]
    return x


def upsample2d(x: jax.Array, f: np.ndarray, up: int = 2) -> jax.Array:
    """FIR up-sampling by ``up`` (output ``[N, H*up, W*up, C]``), gain ``up**2`` as upsample2d."""
    fh, fw = f.shape
    p = ((fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2)
    return upfirdn2d(x, f, up=up, padding=p, gain=float(up * up))


def conv2d(x: jax.Array, w: jax.Array, padding: int) -> jax.Array:
    """Plain correlation (PyTorch ``conv2d``), ``w`` in HWIO."""
    return jax.lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1),
                                        [(padding, padding), (padding, padding)],
                                        dimension_numbers=_DN)


def conv2d_up2(x: jax.Array, w: jax.Array, f: np.ndarray, padding: int) -> jax.Array:
    """Conv with 2x up-sampling, as ``conv2d_resample(up=2, flip_weight=False)``.

    The reference runs a stride-2 transposed convolution followed by the FIR filter; a transposed
    conv is a correlation of the zero-inserted input with the spatially flipped kernel.
    ``w``: HWIO ``[kh, kw, I, O]``; output ``[N, 2H, 2W, O]``.
    """
    kh, kw = w.shape[0], w.shape[1]
    fh, fw = f.shape
    up = 2
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    py0 = padding + (fh + up - 1) // 2 - (kh - 1)
    py1 = padding + (fh - up) // 2 - (kh - up)
    pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
    # The reference calls conv_transpose2d(x, w^T, stride=2, padding=p) with the unflipped
    # weight; a transposed conv is a correlation of the 2x-dilated input, padded by k - 1 - p,
    # with the spatially flipped kernel.
    y = jax.lax.conv_general_dilated(
        x, w[::-1, ::-1].astype(x.dtype), (1, 1),
        [(kh - 1 - pyt, kh - 1 - pyt), (kw - 1 - pxt, kw - 1 - pxt)],
        lhs_dilation=(up, up), dimension_numbers=_DN)
    return upfirdn2d(y, f, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt),
                     gain=float(up * up))
