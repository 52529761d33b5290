"""OpenCV's ``cv2.resize(img, (w, h))`` (INTER_LINEAR, the default) on uint8 images, restated in
numpy so the alignment pipeline sees the pixels 3DDFA_V2 / PanoHead's cropping feed their
networks without depending on OpenCV at runtime.

OpenCV's 8-bit path is fixed point: per output column / row a source index ``s`` and weights
``(1 - f, f)`` from ``f = float32((d + 0.5) * src / dst - 0.5)`` (columns past the borders
take the edge pixel; rows keep their weights and read the edge row twice), rounded to 11
bits (x 2048); the horizontal pass keeps the products as integers, the vertical pass is its
SIMD form ``((((S0 >> 4) * b0) >> 16) + (((S1 >> 4) * b1) >> 16) + 2) >> 2``.
An exact 2x down-scaling in both axes is INTER_AREA instead (``cv::resize`` switches), the
rounded mean of each 2x2 block.

Checked bit-exact against opencv-python 4.x (tests/test_cv2_resize.py), down- and up-scaling.
"""

from __future__ import annotations

import numpy as np

COEF_BITS = 11
COEF_SCALE = 1 << COEF_BITS


def _coeffs(src: int, dst: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source index, next index and the two int weights of each output position. Columns
    (``clamp``) outside the image take the edge pixel with weights (1, 0); rows keep their
    weights and read the edge row twice (OpenCV clips row indices only)."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp:
        lo, hi = s < 0, s >= src - 1
        f[lo | hi] = 0
        s[lo] = 0
        s[hi] = src - 1
    a0 = np.rint((np.float32(1) - f) * np.float32(COEF_SCALE)).astype(np.int64)
    a1 = np.rint(f * np.float32(COEF_SCALE)).astype(np.int64)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), np.stack([a0, a1], -1)


def resize_linear_u8(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(img, dsize=size)`` for a uint8 image [H, W] or [H, W, C]; ``size`` is
    (width, height) as OpenCV takes it. Returns uint8 [height, width(, C)]."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"resize_linear_u8 expects a uint8 image, got {img.dtype}")
    w, h = int(size[0]), int(size[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"output size must be positive, got {(w, h)}")
    src_h, src_w = img.shape[:2]
    if (src_h, src_w) == (h, w):
        return img.copy()
    if src_w == 2 * w and src_h == 2 * h:  # cv::resize uses INTER_AREA here
        return downscale_area_2x_u8(img)
    x = img.astype(np.int64)
    x0, x1, ax = _coeffs(src_w, w, clamp=True)
    y0, y1, ay = _coeffs(src_h, h, clamp=False)
    extra = (None,) * (img.ndim - 2)
    rows = (x[:, x0] * ax[(slice(None), 0, *extra)] + x[:, x1] * ax[(slice(None), 1, *extra)])
    b0 = ay[(slice(None), 0, None, *extra)]
    b1 = ay[(slice(None), 1, None, *extra)]
    v = (((rows[y0] >> 4) * b0) >> 16) + (((rows[y1] >> 4) * b1) >> 16)
    return np.clip((v + 2) >> 2, 0, 255).astype(np.uint8)


def downscale_area_2x_u8(img: np.ndarray) -> np.ndarray:
    """``cv2.resize(img, (W // 2, H // 2), interpolation=cv2.INTER_AREA)`` for a uint8 image of
    even size: the rounded mean ``(a + b + c + d + 2) >> 2`` of each 2 x 2 block."""
    img = np.asarray(img)
    h, w = img.shape[:2]
    if img.dtype != np.uint8 or h % 2 or w % 2:
        raise ValueError(f"downscale_area_2x_u8 expects a uint8 image of even size, got "
                         f"{img.dtype} {img.shape}")
    x = img.astype(np.int64)
    s = x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]
    return ((s + 2) >> 2).astype(np.uint8)
