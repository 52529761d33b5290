"""The identity metric's face crop and ID similarity: Umeyama against an SVD reference, the
warp against OpenCV, a known-answer crop (a synthetic image made by a known similarity
transform of a pattern drawn in template coordinates) that a transposed landmark array or a
flipped channel order breaks, the camera projection against the renderer's rays, and the
embedding / cosine functions."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxhead.camera import make_camera
from jaxhead.metrics import identity as I
from jaxhead.models import arcface as M
from jaxhead.models.panohead import renderer
from jaxhead.ops.grid_sample import warp_affine


def _umeyama_svd(src, dst):
    """Umeyama (1991) with the SVD and the reflection guard, in float64."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    e = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ e @ vt
    c = np.trace(np.diag(sv) @ e) / s.var(0).sum()
    return np.concatenate([c * r, (md - c * r @ ms)[:, None]], 1)


def _similarity(angle, scale, tx, ty):
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(m, p):
    return p @ m[:, :2].T + m[:, 2]


def test_similarity_transform_is_umeyama():
    rng = np.random.default_rng(0)
    m_true = _similarity(0.3, 2.1, 40.0, -12.0)
    src = I.ARCFACE_TEMPLATE + rng.normal(0, 3, (5, 2))
    exact = np.asarray(I.similarity_transform(src, _apply(m_true, src)))
    np.testing.assert_allclose(exact, m_true, rtol=1e-5, atol=1e-3)
    noisy = _apply(m_true, src) + rng.normal(0, 4, (5, 2))
    batch = np.stack([src, src[::-1] + 1.0])  # batched; the second is another point set
    got = np.asarray(jax.jit(I.similarity_transform)(batch, noisy))
    for k in range(2):
        np.testing.assert_allclose(got[k], _umeyama_svd(batch[k], noisy), rtol=1e-5, atol=1e-3)


def test_warp_affine_matches_opencv():
    """Same sampling as ``cv2.warpAffine`` (bilinear, black border) up to OpenCV's 1/32 px
    rounding of the source coordinates: on a smooth image the difference is the image
    gradient times at most 1/64 px."""
    yy, xx = np.mgrid[0:60, 0:80].astype(np.float32)
    img = np.stack([np.sin(xx / 6) * np.cos(yy / 9), xx / 80, np.cos((xx + yy) / 11)], -1)
    m = _similarity(0.4, 1.3, -10.0, 5.0).astype(np.float32)
    ref = cv2.warpAffine(img, m, (70, 50), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = np.asarray(warp_affine(img[None], m[None], (50, 70)))[0]
    grad = 1.0 / 6 + 1.0 / 9  # bound on the pattern's slope per pixel
    assert np.abs(out - ref).max() <= grad / 64 * 1.3 + 1e-5
    assert (ref == 0).all(-1).sum() > 100  # the border region is part of the test


def _pattern(uv):
    """Three different smooth channels on the 112 px template plane ``uv [..., 2]``."""
    u, v = uv[..., 0], uv[..., 1]
    g = sum(np.exp(-((u - x) ** 2 + (v - y) ** 2) / 30.0) for x, y in I.ARCFACE_TEMPLATE)
    return np.stack([0.5 + 0.5 * np.sin(u / 7.0), 0.5 + 0.5 * np.cos(v / 9.0), g], -1)


def test_crop_reproduces_template_known_answer():
    """A 256 px image drawn as ``pattern(T^-1 p)`` for a known similarity T (template ->
    image); cropping it at the landmarks ``T(template)`` must give back ``pattern`` on the
    112 px grid. Transposed landmarks ((y, x) order) and BGR input both break it."""
    t = _similarity(-0.25, 1.7, 0.0, 0.0)
    t[:, 2] = 128.0 - t[:, :2] @ [56.0, 56.0]  # the template's centre at the image centre
    tinv = np.linalg.inv(np.vstack([t, [0, 0, 1]]))[:2]
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float64)
    img = _pattern(_apply(tinv, np.stack([xx, yy], -1)))[None].astype(np.float32)
    lm = _apply(t, I.ARCFACE_TEMPLATE)[None].astype(np.float32)
    gy, gx = np.mgrid[0:112, 0:112].astype(np.float64)
    want = _pattern(np.stack([gx, gy], -1))

    def err(images, landmarks):
        crop = np.asarray(jax.jit(I.align_faces)(images, landmarks))[0]
        return float(np.abs(crop - want).max())

    good = err(img, lm)
    print(f"known-answer crop: max error {good:.2g}; transposed landmarks "
          f"{err(img, lm[..., ::-1]):.2g}; BGR {err(img[..., ::-1], lm):.2g}")
    assert good < 0.01, good  # bilinear interpolation of a 1.7x upsampled pattern
    assert err(img, lm[..., ::-1]) > 0.3  # landmarks as (row, col)
    assert err(img[..., ::-1], lm) > 0.3  # channel order flipped
    with pytest.raises(ValueError, match=r"\[N, 5, 2\]"):
        I.align_faces(img, lm[:, :4])


def test_projection_matches_the_renderer_rays():
    """A point on the ray of pixel (row i, column j) (the renderer's ``ray_sampler``) projects
    to pixel coordinates (x = j, y = i), for frontal, yawed and pitched cameras."""
    res = 16
    cams = make_camera(jnp.array([0.0, 0.5, -0.9]), jnp.array([0.0, 0.2, -0.15]))
    origins, dirs = renderer.ray_sampler(cams[:, :16].reshape(-1, 4, 4),
                                         cams[:, 16:].reshape(-1, 3, 3), res)
    pix = np.array([0, 5, 3 * res + 7, res * res - 1])  # flat indices i * res + j
    pts = origins[:, pix] + 2.6 * dirs[:, pix]  # [N, 4, 3]
    got = np.asarray(I.project_points(pts, cams, res))
    want = np.stack([pix % res, pix // res], -1).astype(np.float32)
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), atol=2e-3)


def test_panohead_landmarks_frontal_view():
    """In the frontal 512 px render the canonical landmarks land where PanoHead's crop puts
    the FFHQ-aligned template (module docstring, step 2), and they are ordered as
    insightface's (image-left eye first, eyes above nose above mouth)."""
    lm = np.asarray(I.render_landmarks(make_camera(jnp.zeros(1), jnp.zeros(1)), 512))[0]
    np.testing.assert_allclose(lm, [[199.15, 265.78], [310.94, 265.78], [255.05, 329.67],
                                    [208.76, 394.87], [301.34, 394.87]], atol=0.02)
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0] and lm[1, 1] < lm[2, 1] < lm[3, 1]
    p = I.PANOHEAD_LANDMARKS_3D
    assert np.linalg.norm(p[0] - p[1]) == pytest.approx(63 * 0.002053, rel=1e-3)
    assert p[2, 2] > p[0, 2] and p[0, 0] < 0 < p[1, 0]  # nose in front; image-left = world -x
    # yawing the camera toward +x moves the face to the image left and turns it
    lm30 = np.asarray(I.render_landmarks(make_camera(jnp.array([0.5]), jnp.zeros(1)), 512))[0]
    assert lm30[:, 0].mean() < lm[:, 0].mean() - 50
    crop = I.crop_renders(np.zeros((1, 512, 512, 3), np.float32), make_camera(
        jnp.zeros(1), jnp.zeros(1)))
    assert crop.shape == (1, 112, 112, 3)


def test_id_similarity():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 4, 512)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(I.id_similarity(a, a)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(I.id_similarity(a, b)),
                               np.asarray(I.id_similarity(b, a)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(I.id_similarity(3.0 * a, b)),
                               np.asarray(I.id_similarity(a, b)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(I.id_similarity(a, -a)), -1.0, rtol=1e-6)
    want = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(np.asarray(jax.jit(I.id_similarity)(a, b)), want, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        I.id_similarity(a, b[:3])


def test_face_embeddings_end_to_end():
    """Crop + normalise + network under jit with a small random network: uint8 and [0, 1]
    input agree, and landmarks from the cameras equal ``cameras=``."""
    params = M.random_params(M.ArcFaceConfig("iresnet", (1, 1, 1, 1), (8, 8, 16, 16), 8, 16))
    rng = np.random.default_rng(2)
    img8 = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    cams = make_camera(jnp.array([0.0, 0.4]), jnp.array([0.0, -0.1]))
    f = jax.jit(lambda p, x, c: I.face_embeddings(p, x, cameras=c))
    e8 = np.asarray(f(params, img8, cams))
    ef = np.asarray(f(params, img8.astype(np.float32) / 255, cams))
    el = np.asarray(jax.jit(lambda p, x, c: I.face_embeddings(
        p, x, landmarks=I.render_landmarks(c, 128)))(params, img8, cams))
    assert e8.shape == (2, 16) and np.isfinite(e8).all()
    np.testing.assert_allclose(ef, e8, rtol=1e-5, atol=1e-5 * np.abs(e8).max())
    np.testing.assert_allclose(el, e8, rtol=1e-5, atol=1e-5 * np.abs(e8).max())
    with pytest.raises(ValueError, match="exactly one"):
        I.face_embeddings(params, img8)
