"""A synthetic test image for resampling checks (no natural images ship with the tests)."""

import numpy as np


def edge_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[h, w, 3]``: smooth shading, a bright disc with a dark cap (hard edges, where
    bicubic overshoots and the clipping matters), a thin white line, mild noise."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = np.stack([0.5 + 0.4 * np.sin(6 * xx + 2 * yy), 0.3 + 0.5 * yy, 0.6 - 0.4 * xx], -1)
    r = np.hypot(xx - 0.5, yy - 0.45)
    img[r < 0.3] = [0.9, 0.75, 0.6]
    img[(r < 0.3) & (yy < 0.3)] = [0.05, 0.03, 0.02]
    img[(np.abs(xx - 0.5) < 0.01) & (yy > 0.8)] = 1.0
    img += 0.03 * np.random.default_rng(seed).standard_normal(img.shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
