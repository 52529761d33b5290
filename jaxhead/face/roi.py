"""3DDFA_V2's region of interest around a face box, its crop, and the mapping of points from
the network's 120x120 crop back to the image (``utils/functions.py`` ``parse_roi_box_from_bbox``
/ ``crop_img`` and ``utils/tddfa_util.py`` ``similar_transform``). Host-side numpy; boxes are
``(x1, y1, x2, y2)`` in image pixels, images ``[H, W, C]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROI_SCALE = 1.58  # side of the square ROI / mean side of the face box
ROI_SHIFT = 0.14  # the ROI's centre sits this fraction of the box's mean side below its centre


def roi_box_from_bbox(bbox: Sequence[float]) -> np.ndarray:
    """Face box ``(x1, y1, x2, y2[, score])`` -> the square ROI ``(sx, sy, ex, ey)`` float64:
    side ``int(1.58 * mean side)`` (truncated, as the reference), centred 0.14 mean sides below
    the box's centre. Computed in float64 (the reference mixes float32 and float64)."""
    left, top, right, bottom = (float(v) for v in bbox[:4])
    old_size = (right - left + bottom - top) / 2
    cx = right - (right - left) / 2.0
    cy = bottom - (bottom - top) / 2.0 + old_size * ROI_SHIFT
    size = int(old_size * ROI_SCALE)
    sx, sy = cx - size / 2, cy - size / 2
    return np.array([sx, sy, sx + size, sy + size], np.float64)


def crop_roi(image: np.ndarray, roi_box: Sequence[float]) -> np.ndarray:
    """The ROI of ``image`` [H, W, C] (or [H, W]), corners rounded half-to-even like Python's
    ``round``; parts outside the image are zeros. Output dtype = input dtype."""
    h, w = image.shape[:2]
    sx, sy, ex, ey = (int(round(float(v))) for v in roi_box)
    dh, dw = ey - sy, ex - sx
    if dh <= 0 or dw <= 0:
        raise ValueError(f"empty ROI {tuple(float(v) for v in roi_box)}")
    out = np.zeros((dh, dw, *image.shape[2:]), image.dtype)
    x0, y0, x1, y1 = max(sx, 0), max(sy, 0), min(ex, w), min(ey, h)
    if x1 > x0 and y1 > y0:
        out[y0 - sy:y1 - sy, x0 - sx:x1 - sx] = image[y0:y1, x0:x1]
    return out


def crop_to_image(pts3d: np.ndarray, roi_box: Sequence[float], size: int = 120) -> np.ndarray:
    """Points ``[3, N]`` in the network's crop frame (BFM units: x right, y up, 1-based) ->
    image pixels: x, y in the image (y down), z scaled by the ROI's mean scale and shifted so
    its minimum is 0. ``similar_transform``; float32 out."""
    p = np.array(pts3d, np.float64)
    p[0] -= 1
    p[2] -= 1
    p[1] = size - p[1]
    sx, sy, ex, ey = (float(v) for v in roi_box)
    scale_x, scale_y = (ex - sx) / size, (ey - sy) / size
    p[0] = p[0] * scale_x + sx
    p[1] = p[1] * scale_y + sy
    p[2] *= (scale_x + scale_y) / 2
    p[2] -= p[2].min()
    return p.astype(np.float32)
