"""Canny on device vs OpenCV's ``cv2.Canny(img, 50, 250)`` (the official code's edge control)."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxhead.ops.canny import canny_control, canny_uint8, gaussian_blur_uint8


def _shapes(rng: np.random.Generator, n: int = 256) -> np.ndarray:
    """Gradient background, filled shapes at several contrasts, thin lines, mild noise."""
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    im = 60 + 0.4 * xx + 25 * np.sin(yy / 17.0)
    im[(xx - 90) ** 2 + (yy - 80) ** 2 < 45 ** 2] += 90
    im[150:230, 40:120] -= 50
    im[np.abs((xx - 180) - 0.6 * (yy - 170)) < 30 * (yy > 130)] += 60  # slanted band
    tri = (yy > 20) & (yy < 110) & (np.abs(xx - 200) < (yy - 20) * 0.5)
    im[tri] = 230
    for k in range(5):
        im[np.abs(yy - (0.9 + 0.1 * k) * xx - 10 * k) < 1] = 20 + 40 * k  # thin diagonal lines
    im += rng.normal(0, 4, im.shape)
    return np.clip(im, 0, 255).astype(np.uint8)


def _fractal(rng: np.random.Generator, n: int = 256, beta: float = 2.2) -> np.ndarray:
    """1/f^beta noise: natural-image-like texture with structure at all scales."""
    f = np.fft.fftfreq(n)
    r = np.hypot(*np.meshgrid(f, f))
    r[0, 0] = 1.0
    spec = (rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))) / r ** (beta / 2)
    im = np.fft.ifft2(spec).real
    im = (im - im.min()) / (im.max() - im.min())
    return (255 * im).astype(np.uint8)


def _render(rng: np.random.Generator, n: int = 512) -> np.ndarray:
    """A render-like RGB image in [-1, 1]: shaded 'head' on a flat background, dark eyes and
    mouth, striped 'hair', slight blur - what the frozen generator hands to Canny."""
    yy, xx = (np.mgrid[:n, :n].astype(np.float32) + 0.5) / n * 2 - 1
    img = np.full((n, n, 3), 0.8, np.float32)
    head = (xx / 0.55) ** 2 + ((yy + 0.05) / 0.72) ** 2
    shade = np.clip(np.sqrt(np.clip(1 - head, 0, 1)) * 0.9 + 0.1 * xx, 0, 1)
    inside = head < 1
    for c, (base, amp) in enumerate([(-0.2, 0.9), (-0.4, 0.8), (-0.5, 0.7)]):
        img[..., c] = np.where(inside, base + amp * shade, img[..., c])
    hair = inside & (yy < -0.35)
    img[hair] = (-0.6 + 0.25 * np.sin(xx[hair] * 90 + 8 * yy[hair]))[:, None] * [1, 0.9, 0.8]
    for ex in (-0.2, 0.2):
        img[((xx - ex) / 0.09) ** 2 + ((yy + 0.05) / 0.04) ** 2 < 1] = -0.8
    img[(np.abs(xx) < 0.15) & (np.abs(yy - 0.4) < 0.02)] = [0.1, -0.5, -0.5]
    img = cv2.GaussianBlur(img, (5, 5), 1.0) + rng.normal(0, 0.01, img.shape).astype(np.float32)
    return img


@pytest.fixture(scope="module")
def gray_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    render = _render(rng)
    return {
        "shapes": _shapes(rng),
        "fractal": _fractal(rng),
        "noise": (rng.random((96, 128)) * 255).astype(np.uint8),
        "checker": cv2.warpAffine(
            (((np.indices((200, 200)).sum(0) // 16) % 2) * 180 + 40).astype(np.uint8),
            cv2.getRotationMatrix2D((100, 100), 30, 1.0), (200, 200),
            borderMode=cv2.BORDER_REFLECT),
        "render_r": np.clip((render + 1) * 127.5, 0, 255).astype(np.uint8)[..., 0],
    }


canny_jit = jax.jit(canny_uint8, static_argnums=(1, 2))


def _agreement(ours: np.ndarray, ref: np.ndarray) -> tuple[int, int, float]:
    """(reference edge pixels, differing pixels, differing / reference edges)."""
    n_ref, n_diff = int(ref.sum()), int((ours != ref).sum())
    return n_ref, n_diff, n_diff / max(n_ref, 1)


@pytest.mark.parametrize("name", ["shapes", "fractal", "noise", "checker", "render_r"])
def test_matches_cv2_canny(gray_images, name):
    img = gray_images[name]
    ref = cv2.Canny(img, 50, 250) > 0
    ours = np.asarray(canny_jit(jnp.asarray(img[None]), 50.0, 250.0))[0]
    n_ref, n_diff, frac = _agreement(ours, ref)
    print(f"{name}: {n_ref} cv2 edge pixels, {n_diff} differ ({100 * frac:.3f}%)")
    assert n_ref > 200, "test image has too few edges to be informative"
    # Integer arithmetic throughout, so we expect (and get) pixel-exact agreement.
    assert n_diff == 0


def test_other_thresholds_and_swapped_order(gray_images):
    img = gray_images["fractal"]
    batch = jnp.asarray(np.stack([img, img]))
    for lo, hi in [(20.0, 90.0), (100.5, 200.7)]:
        ref = cv2.Canny(img, lo, hi) > 0
        np.testing.assert_array_equal(np.asarray(canny_jit(batch, lo, hi))[1], ref)
    # OpenCV swaps low > high; so do we.
    np.testing.assert_array_equal(np.asarray(canny_jit(batch, 250.0, 50.0))[0],
                                  cv2.Canny(img, 250, 50) > 0)


def _official_edge_control(img: np.ndarray) -> np.ndarray:
    """The official train_LD.py path on one HWC render in [-1, 1] (CHW there; channel 0 = R)."""
    chw = img.transpose(2, 0, 1)
    in_np = np.clip((chw + 1) * 127.5, 0, 255).astype(np.uint8)[0]
    e = cv2.Canny(in_np, 50, 250)[:, :, None]
    return np.concatenate([e, e, e], axis=-1).astype(np.float32) / 255.0


def test_canny_control_matches_official_path():
    rng = np.random.default_rng(1)
    render = _render(rng)
    # A batch of 3: the render, its mirror and a brighter copy that clips (tests quantization).
    imgs = np.stack([render, render[:, ::-1], np.clip(render * 1.3 + 0.2, -1.2, 1.2)])
    imgs = imgs.astype(np.float32)
    out = jax.jit(canny_control)(jnp.asarray(imgs))
    assert out.shape == (3, 512, 512, 3) and out.dtype == jnp.float32
    for i in range(3):
        ref = _official_edge_control(imgs[i])
        n_ref, n_diff, _ = _agreement(np.asarray(out[i]) > 0.5, ref > 0.5)
        print(f"render {i}: {n_ref // 3} edge pixels, {n_diff // 3} differ")
        assert n_ref > 3 * 500
        np.testing.assert_array_equal(np.asarray(out[i]), ref)


def test_channel_is_red_not_grey():
    rng = np.random.default_rng(2)
    img = _render(rng, 128)
    img[..., 0] = 0.0  # red carries nothing; green/blue keep the structure
    red, green = jax.jit(lambda x: (canny_control(x), canny_control(x, channel=1)))(
        jnp.asarray(img[None]))
    assert float(red.sum()) == 0 and float(green.sum()) > 0


def test_gaussian_blur_option_matches_cv2(gray_images):
    rng = np.random.default_rng(3)
    noise = (rng.random((60, 70)) * 255).astype(np.uint8)
    for k in (3, 5, 7):
        np.testing.assert_array_equal(
            np.asarray(gaussian_blur_uint8(jnp.asarray(noise[None]), k))[0],
            cv2.GaussianBlur(noise, (k, k), 0))
    names = ("shapes", "fractal")  # same size: one batch, one compile
    imgs = np.stack([gray_images[n] for n in names])
    x = (jnp.asarray(imgs, jnp.float32)[..., None] / 127.5 - 1.0).repeat(3, -1)
    x = x + 0.25 / 127.5  # land safely inside each uint8 bin under truncation
    ours = np.asarray(jax.jit(canny_control, static_argnames="blur_ksize")(x, blur_ksize=5))
    for i, name in enumerate(names):
        ref = cv2.Canny(cv2.GaussianBlur(imgs[i], (5, 5), 0), 50, 250) > 0
        n_ref, n_diff, _ = _agreement(ours[i, ..., 0] > 0.5, ref)
        print(f"blur5 {name}: {n_ref} cv2 edge pixels, {n_diff} differ")
        assert n_ref > 100 and n_diff == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        canny_control(jnp.zeros((4, 32, 32)))
    with pytest.raises(ValueError, match="3, 5 or 7"):
        canny_control(jnp.zeros((1, 32, 32, 3)), blur_ksize=9)


def test_no_host_round_trip_in_jit():
    x = jax.device_put(jnp.zeros((2, 64, 64, 3)))
    f = jax.jit(canny_control)
    f(x).block_until_ready()  # compile (constants may be transferred once here)
    with jax.transfer_guard("disallow"):
        f(x).block_until_ready()
