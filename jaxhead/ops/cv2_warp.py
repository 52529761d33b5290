"""OpenCV's ``cv2.warpAffine`` on uint8 images, restated in numpy (PanoHead's recropping warps
photos with INTER_LANCZOS4 and a white mask with INTER_LINEAR; jaxhead has no runtime OpenCV
dependency). LANCZOS4 (:func:`warp_affine_lanczos4_u8`):

OpenCV inverts ``M`` (``WARP_INVERSE_MAP`` not set), walks the output in 1/1024-pixel fixed
point (``round(M * x * 1024)`` per column plus ``round((M y + b) * 1024) + 16`` per row),
shifts to a 1/32-pixel grid (integer source pixel + one of 32 x 32 sub-pixel phases), and
sums the 8 x 8 source pixels around it with that phase's Lanczos-4 kernel in 15-bit fixed
point (a table built from the float kernel, rounded, its sum forced to 32768 by adjusting one
central tap), rounding ``(sum + 2^14) >> 15`` and saturating to 0..255. Taps outside the image
are zero (``"constant"``) or mirrored ``abc|cba`` (``"reflect"``, BORDER_REFLECT).

INTER_LINEAR: :func:`warp_affine_linear_u8` (within 1 level, not bit-exact, see there).
Checked against the installed opencv-python (5.1) in tests/test_cv2_warp.py.
"""

from __future__ import annotations

import functools
import math

import numpy as np

INTER_BITS = 5
TAB_SIZE = 1 << INTER_BITS  # sub-pixel phases per axis
AB_BITS = 10
AB_SCALE = 1 << AB_BITS
COEF_BITS = 15
COEF_SCALE = 1 << COEF_BITS
BORDERS = ("constant", "reflect")


def _lanczos4_taps(x: np.float32) -> np.ndarray:
    """OpenCV's ``interpolateLanczos4``: 8 float32 taps for the fractional offset ``x``,
    normalised to sum 1 (a tap at distance 0 is 1e30 before normalising)."""
    s45 = 0.70710678118654752440084436210485
    cs = ((1, 0), (-s45, -s45), (0, 1), (s45, -s45), (-1, 0), (s45, s45), (0, -1), (-s45, s45))
    y0 = -(float(x) + 3) * math.pi * 0.25
    s0, c0 = math.sin(y0), math.cos(y0)
    taps = np.zeros(8, np.float32)
    total = np.float32(0)
    for i in range(8):
        d = np.float32(x + np.float32(3 - i))
        if abs(d) >= np.float32(1e-6):
            y = -float(d) * math.pi * 0.25
            taps[i] = np.float32((cs[i][0] * s0 + cs[i][1] * c0) / (y * y))
        else:
            taps[i] = np.float32(1e30)
        total = np.float32(total + taps[i])
    return (taps * np.float32(np.float32(1) / total)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def lanczos4_table() -> np.ndarray:
    """``[32 * 32, 8, 8]`` int64 fixed-point kernels, indexed ``y_phase * 32 + x_phase``."""
    t1 = np.stack([_lanczos4_taps(np.float32(i) / np.float32(TAB_SIZE))
                   for i in range(TAB_SIZE)])
    out = np.zeros((TAB_SIZE * TAB_SIZE, 8, 8), np.int64)
    for i in range(TAB_SIZE):
        for j in range(TAB_SIZE):
            k = np.rint((t1[i][:, None] * t1[j][None, :]).astype(np.float32)
                        * np.float32(COEF_SCALE)).astype(np.int64)
            diff = int(k.sum()) - COEF_SCALE
            if diff:  # OpenCV moves the rounding error onto the min / max of the central 2x2
                lo = hi = (4, 4)
                for a in (4, 5):
                    for b in (4, 5):
                        if k[a, b] < k[lo]:
                            lo = (a, b)
                        elif k[a, b] > k[hi]:
                            hi = (a, b)
                if diff < 0:
                    k[hi] -= diff
                else:
                    k[lo] -= diff
            out[i * TAB_SIZE + j] = k
    return out


def _border(idx: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Source indices for ``idx`` under the border mode; -1 where a constant border applies."""
    if mode == "constant":
        return np.where((idx >= 0) & (idx < n), idx, -1)
    if n == 1:
        return np.zeros_like(idx)
    m = np.mod(idx, 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """OpenCV's inversion of a [2, 3] affine map (as ``warpAffine`` does it), float64."""
    m = np.asarray(m, np.float64).reshape(6).copy()
    d = m[0] * m[4] - m[1] * m[3]
    d = 1.0 / d if d != 0 else 0.0
    a11, a22 = m[4] * d, m[0] * d
    m[0], m[1], m[3], m[4] = a11, m[1] * -d, m[3] * -d, a22
    m[2], m[5] = -m[0] * m[2] - m[1] * m[5], -m[3] * m[2] - m[4] * m[5]
    return m.reshape(2, 3)


def warp_affine_lanczos4_u8(img: np.ndarray, m: np.ndarray, size: tuple[int, int],
                            border: str = "constant") -> np.ndarray:
    """``cv2.warpAffine(img, m, size, flags=cv2.INTER_LANCZOS4, borderMode=...)`` for a uint8
    image [H, W] or [H, W, C]; ``m`` [2, 3] maps source to output pixels, ``size`` is
    (width, height); ``border`` "constant" (zeros) or "reflect". Returns uint8."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"warp_affine_lanczos4_u8 expects a uint8 image, got {img.dtype}")
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    inv = invert_affine(m).reshape(6)
    w, h = int(size[0]), int(size[1])
    src_h, src_w = img.shape[:2]
    src = img.astype(np.int64).reshape(src_h, src_w, -1)
    cols_x = np.arange(w)
    adelta = np.rint(inv[0] * cols_x * AB_SCALE).astype(np.int64)
    bdelta = np.rint(inv[3] * cols_x * AB_SCALE).astype(np.int64)
    table = lanczos4_table()
    round_delta = AB_SCALE // TAB_SIZE // 2
    out = np.zeros((h, w, src.shape[2]), np.uint8)
    taps = np.arange(8)
    for y in range(h):
        x0 = int(np.rint((inv[1] * y + inv[2]) * AB_SCALE)) + round_delta
        y0 = int(np.rint((inv[4] * y + inv[5]) * AB_SCALE)) + round_delta
        xf = (x0 + adelta) >> (AB_BITS - INTER_BITS)
        yf = (y0 + bdelta) >> (AB_BITS - INTER_BITS)
        sx = np.clip(xf >> INTER_BITS, -32768, 32767) - 3
        sy = np.clip(yf >> INTER_BITS, -32768, 32767) - 3
        k = table[(yf & (TAB_SIZE - 1)) * TAB_SIZE + (xf & (TAB_SIZE - 1))]  # [w, 8, 8]
        cols = _border(sx[:, None] + taps, src_w, border)
        rows = _border(sy[:, None] + taps, src_h, border)
        valid = (rows[:, :, None] >= 0) & (cols[:, None, :] >= 0)
        pix = src[np.maximum(rows, 0)[:, :, None], np.maximum(cols, 0)[:, None, :]]
        s = np.sum(np.where(valid[..., None], pix, 0) * k[..., None], axis=(1, 2))
        out[y] = np.clip((s + (1 << (COEF_BITS - 1))) >> COEF_BITS, 0, 255)
    return out.reshape(h, w, *img.shape[2:])



def warp_affine_linear_u8(img: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.warpAffine(img, m, size)`` (INTER_LINEAR, BORDER_CONSTANT zeros) for a uint8 image,
    close to OpenCV >= 4.11's float path: source coordinates of the inverted map in float64
    cast to float32, bilinear ``lerp`` in float32 (outside pixels 0), rounded to nearest.
    Not bit-exact: OpenCV rounds its float32 coordinates differently (single-precision
    matrix, FMA), so about 1 value in 10^4 differs by 1 (measured in tests/test_cv2_warp.py);
    OpenCV < 4.11 used a 1/32-pixel fixed-point grid instead. PanoHead uses it only for the
    white mask of ``crop_final``."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"warp_affine_linear_u8 expects a uint8 image, got {img.dtype}")
    inv = invert_affine(m)
    w, h = int(size[0]), int(size[1])
    src_h, src_w = img.shape[:2]
    src = img.astype(np.float32).reshape(src_h, src_w, -1)
    yy, xx = np.mgrid[0:h, 0:w]
    sx = (inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]).astype(np.float32)
    sy = (inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]).astype(np.float32)
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx = (sx - x0).astype(np.float32)[..., None]
    fy = (sy - y0).astype(np.float32)[..., None]

    def pixel(yi: np.ndarray, xi: np.ndarray) -> np.ndarray:
        inside = (yi >= 0) & (yi < src_h) & (xi >= 0) & (xi < src_w)
        v = src[np.clip(yi, 0, src_h - 1), np.clip(xi, 0, src_w - 1)]
        return np.where(inside[..., None], v, np.float32(0))

    top = pixel(y0, x0) + fx * (pixel(y0, x0 + 1) - pixel(y0, x0))
    bottom = pixel(y0 + 1, x0) + fx * (pixel(y0 + 1, x0 + 1) - pixel(y0 + 1, x0))
    v = top + fy * (bottom - top)
    return np.clip(np.rint(v), 0, 255).astype(np.uint8).reshape(h, w, *img.shape[2:])
