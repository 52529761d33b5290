"""``resize_linear_u8`` vs OpenCV's ``cv2.resize`` (INTER_LINEAR) on uint8 images."""

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from jaxhead.ops.cv2_resize import downscale_area_2x_u8, resize_linear_u8  # noqa: E402


def _image(h: int, w: int, c: int | None = 3, seed: int = 0) -> np.ndarray:
    """Smooth content plus noise (photo-like: neighbouring pixels related)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(xx / 7.0 + yy / 11.0)
    shape = (h, w) if c is None else (h, w, c)
    noise = rng.normal(0, 20, shape)
    img = (base if c is None else base[..., None]) + noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("src, dst", [((300, 300), (120, 120)), ((517, 389), (120, 120)),
                                      ((1901, 3913), (1080, 524)), ((240, 240), (120, 120)),
                                      ((121, 121), (120, 120)), ((61, 200), (17, 33))])
def test_downscaling_is_bit_exact(src, dst):
    img = _image(*src)
    want = cv2.resize(img, dsize=dst)
    np.testing.assert_array_equal(resize_linear_u8(img, dst), want)


def test_gray_and_identity():
    img = _image(90, 70, None, seed=1)
    np.testing.assert_array_equal(resize_linear_u8(img, (30, 41)), cv2.resize(img, (30, 41)))
    np.testing.assert_array_equal(resize_linear_u8(img, (70, 90)), img)


@pytest.mark.parametrize("src, dst", [((97, 97), (120, 120)), ((60, 60), (120, 120)),
                                      ((100, 45), (33, 250)), ((7, 5), (120, 120)),
                                      ((13, 200), (500, 3))])
def test_upscaling_and_mixed_are_bit_exact(src, dst):
    img = _image(*src, seed=2)
    np.testing.assert_array_equal(resize_linear_u8(img, dst), cv2.resize(img, dsize=dst))


def test_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        resize_linear_u8(np.zeros((4, 4), np.float32), (2, 2))


def test_area_2x_matches_opencv():
    img = _image(126, 90, seed=3)
    want = cv2.resize(img, (45, 63), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(downscale_area_2x_u8(img), want)
