"""The two image crops of PanoHead's ``recrop_images.py``, with the bit-exact OpenCV
restatements of :mod:`jaxhead.ops`: the 512 px first crop the pose is read on
(``crop_image``) and the final crop with its blurred border blend (``crop_final``). uint8 BGR
images [H, W, 3]; quads from :mod:`jaxhead.face.recrop`."""

from __future__ import annotations

import numpy as np

from jaxhead.face.recrop import CROP_SIZE, Quad, affine_from_points, crop_corners
from jaxhead.ops.cv2_blur import box_blur
from jaxhead.ops.cv2_resize import downscale_area_2x_u8
from jaxhead.ops.cv2_warp import warp_affine_lanczos4_u8, warp_affine_linear_u8

TOP, LEFT, BOTTOM, RIGHT = 0.1, 0.05, 0.0, 0.05  # crop_final's margins, fractions of size
MIN_QUAD = 256  # crop_final refuses quads with a side under this many pixels


def first_crop(img: np.ndarray, quad: Quad, size: int = CROP_SIZE) -> np.ndarray:
    """The quad warped onto a ``size`` square (LANCZOS4, black outside the photo)."""
    corners = quad.corners()
    mat = affine_from_points(corners[:3], crop_corners(size)[:3])
    return warp_affine_lanczos4_u8(img, mat, (size, size), "constant")


def final_crop(img: np.ndarray, quad: Quad, size: int = CROP_SIZE) -> np.ndarray | None:
    """``crop_final(img, size, quad)`` with the reference's defaults: the quad onto a
    ``size`` square inside a ``int(1.1 size)`` crop (0.1 margin on top, 0.05 left / right),
    warped at 2x (LANCZOS4, mirrored border) and halved (INTER_AREA); where the photo ends,
    the crop is blended into a box-blurred copy through a blurred mask. None when the quad's
    shorter side is under 256 px (the reference skips such photos)."""
    corners = quad.corners()
    side = min(np.linalg.norm(corners[1] - corners[0]), np.linalg.norm(corners[2] - corners[1]))
    if side < MIN_QUAD:
        return None
    crop_w, crop_h = int(size * (1 + LEFT + RIGHT)), int(size * (1 + TOP + BOTTOM))
    top, left, s = int(size * TOP), int(size * LEFT), size - 1
    bound = np.array([[left, top], [left, top + s], [left + s, top + s], [left + s, top]],
                     np.float32)
    mat = affine_from_points(corners[:3], bound[:3])
    crop = downscale_area_2x_u8(
        warp_affine_lanczos4_u8(img, 2 * mat, (2 * crop_w, 2 * crop_h), "reflect"))
    mask = warp_affine_linear_u8(np.full_like(img, 255), mat, (crop_w, crop_h))
    if mask.mean() < 255:
        blur_mask = box_blur(mask.astype(np.float32).mean(2), int(s * 0.02) * 2 + 1) / 255.0
        blur_mask = blur_mask[..., None]
        blurred = box_blur(crop, int(s * 0.03) * 2 + 1)
        crop = (crop * blur_mask + blurred * (1 - blur_mask)).astype(np.uint8)
    return crop
