"""FIR up-sampling and resampled convolution (StyleGAN2's ``upfirdn2d`` / ``conv2d_resample``).

NHWC, pure JAX. Semantics follow the reference (``_ref``) PyTorch implementations:
``upfirdn2d`` = zero-insert upsample, pad (negative = crop), convolve with the flipped filter,
decimate. Only what PanoHead uses is implemented: up-sampling by 2 and plain convolutions.

Everything is written with ordinary convolutions and shifted-slice sums (separable FIR
filters), no dilated or grouped convolutions: XLA's CPU backend runs those (and especially
their gradients) on slow generic paths, while these forms are fast on every backend.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.ops import platform

_DN = ("NHWC", "HWIO", "NHWC")
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def setup_filter(taps: Sequence[float] = FIR_TAPS) -> np.ndarray:
    """Separable taps -> normalized 2-D FIR filter ``[fh, fw]`` (sum 1), as the reference."""
    f = np.outer(np.asarray(taps, np.float64), np.asarray(taps, np.float64))
    return (f / f.sum()).astype(np.float32)


def _fir_1d(x: jax.Array, taps: np.ndarray, axis: int) -> jax.Array:
    """VALID correlation with ``taps`` along ``axis`` as a sum of shifted slices."""
    n_out = x.shape[axis] - len(taps) + 1
    out = None
    for k, t in enumerate(taps):
        term = jax.lax.slice_in_dim(x, k, k + n_out, axis=axis) * np.asarray(t, x.dtype)
        out = term if out is None else out + term
    return out


def upfirdn2d(x: jax.Array, taps: Sequence[float] = FIR_TAPS, *, up: int = 1, down: int = 1,
              padding: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> jax.Array:
    """Upsample (zero insertion), pad/crop, separable FIR filter, downsample.

    Args:
      x: ``[N, H, W, C]``.
      taps: 1-D filter taps; the 2-D filter is their outer product normalized to sum 1
        (``setup_filter``), scaled by ``gain``.
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
    t = np.asarray(taps, np.float64)
    t = (t / t.sum() * np.sqrt(gain))[::-1]  # the reference convolves (flipped filter)
    x = _fir_1d(_fir_1d(x, t, axis=1), t, axis=2)
    if down > 1:
        x = x[:, ::down, ::down]
    return x


def _upsample2_1d(x: jax.Array, taps: np.ndarray, pad0: int, axis: int) -> jax.Array:
    """Zero-insertion by 2, ``pad0`` leading zeros, VALID correlation with ``taps`` along
    ``axis`` (output length ``2 * n``), in polyphase form: output ``2m + a`` only meets the
    taps ``k`` with ``a + k - pad0`` even, i.e. input samples ``m + (a + k - pad0) // 2``."""
    n = x.shape[axis]
    offs = [(a + k - pad0) // 2 for a in (0, 1) for k in range(len(taps))
            if (a + k - pad0) % 2 == 0]
    lo, hi = max(0, -min(offs)), max(0, max(offs))
    widths = [(0, 0)] * x.ndim
    widths[axis] = (lo, hi)
    xp = jnp.pad(x, widths)
    phases = []
    for a in (0, 1):
        out = None
        for k, t in enumerate(taps):
            if (a + k - pad0) % 2:
                continue
            o = (a + k - pad0) // 2 + lo
            term = jax.lax.slice_in_dim(xp, o, o + n, axis=axis) * np.asarray(t, x.dtype)
            out = term if out is None else out + term
        phases.append(out)
    y = jnp.stack(phases, axis=axis + 1)  # [..., n, 2, ...]
    return y.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])


def upsample2d(x: jax.Array, taps: Sequence[float] = FIR_TAPS, up: int = 2) -> jax.Array:
    """FIR up-sampling by ``up`` (output ``[N, H*up, W*up, C]``), gain ``up**2``."""
    f = len(taps)
    p = ((f + up - 1) // 2, (f - up) // 2, (f + up - 1) // 2, (f - up) // 2)
    if up != 2:
        return upfirdn2d(x, taps, up=up, padding=p, gain=float(up * up))
    # Polyphase: no zero-inserted intermediate (4x the output's size in memory traffic).
    t = np.asarray(taps, np.float64)
    t = (t / t.sum() * 2.0)[::-1]  # sqrt(gain) per axis, flipped as in upfirdn2d
    return _upsample2_1d(_upsample2_1d(x, t, p[2], axis=1), t, p[0], axis=2)


def _conv(x: jax.Array, w: jax.Array, pad: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_fast_wgrad(x: jax.Array, w: jax.Array, pad: tuple) -> jax.Array:
    return _conv(x, w, pad)


def _conv_fwd(x, w, pad):
    return _conv(x, w, pad), (x, w)


# Weight-gradient tiles of the im2col form hold about this many float32 elements (4 MB: they
# stay in cache between the copy and the GEMM).
_WGRAD_TILE_ELEMS = 1 << 20


def _wgrad_taps(xt: jax.Array, dy: jax.Array, kh: int, kw: int) -> jax.Array:
    """``[kh, kw, I, O]`` weight gradient as one ``[I, P] x [P, O]`` GEMM per tap.

    ``xt``: the padded input, channel-major ``[I, N, Hp, Wp]``; ``dy``: ``[N, H, W, O]``. A
    loop, so that only one shifted window of the input is live at a time.
    """
    ci = xt.shape[0]
    n, h, wd, o = dy.shape
    dy2 = dy.reshape(n * h * wd, o)

    def tap(k, dw):
        a, b = k // kw, k % kw
        win = jax.lax.dynamic_slice(xt, (0, 0, a, b), (ci, n, h, wd)).reshape(ci, n * h * wd)
        g = jnp.matmul(win, dy2, precision=jax.lax.Precision.HIGHEST,
                       preferred_element_type=jnp.float32)  # [I, O]
        return jax.lax.dynamic_update_slice(dw, g[None, None], (a, b, 0, 0))

    return jax.lax.fori_loop(0, kh * kw, tap, jnp.zeros((kh, kw, ci, o), jnp.float32))


def _wgrad_rows(xt: jax.Array, dy: jax.Array, kh: int, kw: int) -> jax.Array:
    """``[kh, kw, I, O]`` weight gradient as im2col GEMMs over tiles of output rows.

    Each tile of ``t`` rows stacks its ``kh * kw`` shifted windows into a ``[kh*kw*I, t*W]``
    operand (about ``_WGRAD_TILE_ELEMS`` elements) and adds ``operand @ dy_tile`` to the
    result. For few channels this GEMM shape runs near peak where the per-tap ``[I, P] x
    [P, O]`` GEMMs do not (3x3, 128 ch at 512 px: 1.04 -> 0.62 s; docs/performance.md).
    ``xt`` must hold ``kh - 1`` padded rows beyond the last tile.
    """
    ci = xt.shape[0]
    n, h, wd, o = dy.shape
    taps = kh * kw
    t = max(1, min(h, _WGRAD_TILE_ELEMS // (taps * ci * n * wd)))
    tiles = -(-h // t)
    dy = jnp.pad(dy, ((0, 0), (0, tiles * t - h), (0, 0), (0, 0)))  # zero rows add nothing
    xt = jnp.pad(xt, ((0, 0), (0, 0), (0, tiles * t + kh - 1 - xt.shape[2]), (0, 0)))

    def tile(j, acc):
        rows = jax.lax.dynamic_slice_in_dim(xt, j * t, t + kh - 1, axis=2)
        cols = jnp.stack([rows[:, :, a:a + t, b:b + wd] for a in range(kh) for b in range(kw)])
        d = jax.lax.dynamic_slice_in_dim(dy, j * t, t, axis=1).reshape(n * t * wd, o)
        return acc + jnp.matmul(cols.reshape(taps * ci, n * t * wd), d,
                                precision=jax.lax.Precision.HIGHEST,
                                preferred_element_type=jnp.float32)

    acc = jax.lax.fori_loop(0, tiles, tile, jnp.zeros((taps * ci, o), jnp.float32))
    return acc.reshape(kh, kw, ci, o)


def _conv_bwd(pad, res, dy):
    x, w = res
    kh, kw = w.shape[0], w.shape[1]
    (pt, pb), (pl, pr) = pad
    # Input gradient: XLA's own (a correlation with the flipped kernel; fast everywhere).
    dx = jax.vjp(lambda xx: _conv(xx, w, pad), x)[1](dy)[0]
    # Weight gradient as GEMMs over shifted input windows (XLA:CPU's backprop-filter
    # convolution is slower). The padded input is made channel-major once, so that windows are
    # [I, pixels] GEMM operands without a transpose each (3x3, 128 ch at 512 px: 1.84 -> 1.01 s).
    # Many pixels and few channels: im2col tiles; otherwise one GEMM per tap.
    with jax.named_scope(platform.CPU_WGRAD):
        xt = jnp.transpose(jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))), (3, 0, 1, 2))
        n, h, wd, _ = dy.shape
        if x.shape[-1] <= 256 and n * h * wd >= 65536:
            dw = _wgrad_rows(xt, dy, kh, kw)
        else:
            dw = _wgrad_taps(xt, dy, kh, kw)
    return dx, dw.astype(w.dtype)


_conv_fast_wgrad.defvjp(_conv_fwd, _conv_bwd)


def conv2d_general(x: jax.Array, w: jax.Array,
                   pad: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Stride-1 correlation, HWIO weights, explicit ``((top, bottom), (left, right))`` padding.

    In programs lowered for CPU the weight gradient is computed as GEMMs (custom VJP); for
    other platforms XLA's own (:func:`jaxhead.ops.platform.per_platform`). An
    unpadded 1x1 kernel is a plain GEMM over the channels (XLA:CPU's 1x1 convolution is several
    times slower than its dot, most of all for few output channels such as ToRGB's 3).
    """
    w = w.astype(x.dtype)
    if w.shape[:2] == (1, 1) and tuple(map(tuple, pad)) == ((0, 0), (0, 0)):
        return jnp.einsum("nhwi,io->nhwo", x, w[0, 0])
    return platform.per_platform(x, w, cpu=lambda a, b: _conv_fast_wgrad(a, b, pad),
                                 accelerator=lambda a, b: _conv(a, b, pad))


def conv2d(x: jax.Array, w: jax.Array, padding: int) -> jax.Array:
    """Plain correlation (PyTorch ``conv2d``), ``w`` in HWIO."""
    return conv2d_general(x, w, ((padding, padding), (padding, padding)))


def _conv_transpose_3x3_s2(x: jax.Array, w: jax.Array) -> jax.Array:
    """``conv_transpose2d(x, w^T, stride=2)`` for a 3x3 HWIO kernel, ``[N, 2H+1, 2W+1, O]``.

    Polyphase form: output row ``2m`` is ``x[m-1] w[2] + x[m] w[0]`` and row ``2m+1`` is
    ``x[m] w[1]`` (same along columns), so the four output phases are ordinary convolutions
    of ``x`` with 2x2, 2x1, 1x2 and 1x1 sub-kernels, interleaved afterwards.
    """
    n, h, wd, _ = x.shape
    ev, od = jnp.array([2, 0]), jnp.array([1])
    k = w.astype(x.dtype)

    def phase(rows, cols, pad_r, pad_c):
        return conv2d_general(x, k[rows][:, cols], ((pad_r, pad_r), (pad_c, pad_c)))

    ee = phase(ev, ev, 1, 1)  # [N, H+1, W+1, O]
    eo = phase(ev, od, 1, 0)  # [N, H+1, W, O]
    oe = phase(od, ev, 0, 1)  # [N, H, W+1, O]
    oo = phase(od, od, 0, 0)  # [N, H, W, O]
    eo = jnp.pad(eo, ((0, 0), (0, 0), (0, 1), (0, 0)))
    oe = jnp.pad(oe, ((0, 0), (0, 1), (0, 0), (0, 0)))
    oo = jnp.pad(oo, ((0, 0), (0, 1), (0, 1), (0, 0)))
    even_rows = jnp.stack([ee, eo], axis=3)  # [N, H+1, W+1, 2, O]
    odd_rows = jnp.stack([oe, oo], axis=3)
    y = jnp.stack([even_rows, odd_rows], axis=2)  # [N, H+1, 2, W+1, 2, O]
    y = y.reshape(n, 2 * h + 2, 2 * wd + 2, -1)
    return y[:, : 2 * h + 1, : 2 * wd + 1]


def conv2d_up2(x: jax.Array, w: jax.Array, taps: Sequence[float] = FIR_TAPS,
               padding: int = 1) -> jax.Array:
    """3x3 conv with 2x up-sampling, as ``conv2d_resample(up=2, padding=1, flip_weight=False)``.

    The reference runs a stride-2 transposed convolution of the unflipped weight followed by
    the FIR filter (gain 4). ``w``: HWIO ``[3, 3, I, O]``; output ``[N, 2H, 2W, O]``.
    """
    kh, kw = w.shape[0], w.shape[1]
    if (kh, kw) != (3, 3) or padding != 1:
        raise NotImplementedError("conv2d_up2 supports 3x3 kernels with padding 1")
    f, up = len(taps), 2
    p0 = padding + (f + up - 1) // 2 - (kw - 1)
    p1 = padding + (f - up) // 2 - (kw - up)
    y = _conv_transpose_3x3_s2(x, w)
    return upfirdn2d(y, taps, padding=(p0, p1, p0, p1), gain=float(up * up))
