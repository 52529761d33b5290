"""OpenCV's ``cv2.blur(img, (k, k))`` (normalised box filter, BORDER_REFLECT_101) in numpy:
exact integer / float64 window sums scaled by ``1 / k^2``; uint8 rounds to nearest, float32
keeps the float64 product cast to float32. Checked bit-exact in tests/test_cv2_warp.py."""

from __future__ import annotations

import numpy as np


def _window_sums(x: np.ndarray, k: int) -> np.ndarray:
    r = k // 2
    extra = [(0, 0)] * (x.ndim - 2)
    p = np.pad(x, [(r, r), (r, r), *extra], mode="reflect")  # numpy "reflect" = REFLECT_101
    c = np.pad(np.cumsum(np.cumsum(p, 0), 1), [(1, 0), (1, 0), *extra])
    h, w = x.shape[:2]
    return c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]


def box_blur(img: np.ndarray, k: int) -> np.ndarray:
    """``cv2.blur(img, (k, k))`` for a uint8 or float32 image [H, W] or [H, W, C], odd ``k``."""
    img = np.asarray(img)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"box_blur needs an odd kernel size, got {k}")
    scale = 1.0 / (k * k)
    if img.dtype == np.uint8:
        s = _window_sums(img.astype(np.int64), k)
        return np.clip(np.rint(s * scale), 0, 255).astype(np.uint8)
    if img.dtype == np.float32:
        return (_window_sums(img.astype(np.float64), k) * scale).astype(np.float32)
    raise ValueError(f"box_blur expects uint8 or float32, got {img.dtype}")
