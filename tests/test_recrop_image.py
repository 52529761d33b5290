"""PanoHead's two crops (``crop_image``, ``crop_final`` of ``recrop_images.py``) vs the
reference functions restated with OpenCV itself."""

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from jaxhead.face import recrop, recrop_image  # noqa: E402


def ref_crop_final(img, quad, size=512):
    """``crop_final`` with its defaults (top 0.1, left / right 0.05, upsample 2, reflect)."""
    if min(np.linalg.norm(quad[1] - quad[0]), np.linalg.norm(quad[2] - quad[1])) < 256:
        return None
    crop_w, crop_h = int(size * 1.1), int(size * 1.1)
    top, left = int(size * 0.1), int(size * 0.05)
    size -= 1
    bound = np.array([[left, top], [left, top + size], [left + size, top + size],
                      [left + size, top]], dtype=np.float32)
    mat = cv2.getAffineTransform(quad[:3], bound[:3])
    crop = cv2.warpAffine(img, 2 * mat, (crop_w * 2, crop_h * 2), flags=cv2.INTER_LANCZOS4,
                          borderMode=cv2.BORDER_REFLECT)
    crop = cv2.resize(crop, (crop_w, crop_h), interpolation=cv2.INTER_AREA)
    mask = cv2.warpAffine(np.ones_like(img) * 255, mat, (crop_w, crop_h))
    if mask.mean() < 255:
        bm = cv2.blur(mask.astype(np.float32).mean(2), (int(size * 0.02) * 2 + 1,) * 2) / 255.0
        bm = bm[..., np.newaxis]
        blurred = cv2.blur(crop, (int(size * 0.03) * 2 + 1,) * 2)
        crop = (crop * bm + blurred * (1 - bm)).astype(np.uint8)
    return crop


def _photo(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 127 + 90 * np.sin(xx / 13.0)[..., None] * np.cos(yy / 17.0)[..., None]
    return np.clip(img + rng.normal(0, 15, (h, w, 3)), 0, 255).astype(np.uint8)


def _quad(cx: float, cy: float, half: float, angle: float) -> recrop.Quad:
    x = half * np.array([np.cos(angle), np.sin(angle)])
    return recrop.Quad(np.array([cx, cy]), x, np.flipud(x) * [-1, 1])


def test_final_crop_inside_the_photo_is_bit_exact():
    img = _photo(420, 400)
    quad = _quad(200, 210, 130, 0.1)  # the 1.1x crop stays inside: no border blend
    want = ref_crop_final(img, quad.corners(), size=300)
    got = recrop_image.final_crop(img, quad, size=300)
    assert got.shape == want.shape == (330, 330, 3)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("quad_args", [(200, 180, 140, 0.1), (120, 150, 150, -0.2)])
def test_final_crop_with_border_blend(quad_args):
    """Quads reaching past the photo: the blurred-border blend runs; its mask comes from the
    INTER_LINEAR warp, which is within 1 level of OpenCV's (see test_cv2_warp.py), so a few
    pixels may differ by 1."""
    img = _photo(360, 330)
    quad = _quad(*quad_args)
    want = ref_crop_final(img, quad.corners(), size=300)
    got = recrop_image.final_crop(img, quad, size=300)
    assert got.shape == want.shape == (330, 330, 3)
    assert (cv2.warpAffine(np.full_like(img, 255), cv2.getAffineTransform(
        quad.corners()[:3], np.float32([[15, 30], [15, 329], [314, 329]])), (330, 330))
        .mean() < 255)  # the blend runs
    d = np.abs(got.astype(int) - want)
    assert d.max() <= 1 and np.mean(d > 0) < 1e-4


def test_first_crop_matches_reference_and_small_quads_are_skipped():
    img = _photo(300, 280)
    quad = _quad(150, 140, 100, 0.15)
    corners = quad.corners()
    bound = np.array([[0, 0], [0, 127], [127, 127], [127, 0]], np.float32)
    want = cv2.warpAffine(img, cv2.getAffineTransform(corners[:3], bound[:3]), (128, 128),
                          flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_CONSTANT)
    np.testing.assert_array_equal(recrop_image.first_crop(img, quad, size=128), want)
    assert recrop_image.final_crop(img, _quad(150, 140, 100, 0.0)) is None  # side 200 < 256
