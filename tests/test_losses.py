"""Distillation objectives: the official code's numbers, exact identities, analytic teacher."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxhead.losses import (
    bsd_grad,
    guidance_score,
    injected_loss,
    ld_grad,
    ldis,
    make_grid,
    mirror_loss,
    postprocess_grad,
    rank_weighting,
    resize_and_grid,
    sds_grad,
    split_grid,
)


@pytest.fixture(scope="module")
def off(fixtures_dir):
    return dict(np.load(fixtures_dir / "ld_official" / "ld_official.npz"))


def nhwc(x):
    return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def test_official_ld_pipeline(off):
    eu, ec, mask = nhwc(off["eps_uncond"]), nhwc(off["eps_text"]), nhwc(off["mask"])
    s = guidance_score(eu, ec, float(off["guidance_scale"]))
    np.testing.assert_allclose(nchw(s), off["score"], atol=1e-5)
    rw = jax.jit(rank_weighting, static_argnames="renorm")(s, renorm=False)
    scale = np.abs(off["rank_weighted"]).max()
    assert np.abs(nchw(rw) - off["rank_weighted"]).max() <= 1e-4 * scale
    rwn = jax.jit(rank_weighting)(s)
    assert np.abs(nchw(rwn) - off["rank_weighted_renorm"]).max() <= 1e-4 * scale
    # the official code indexes alphas_cumprod by the DDIM step *index*
    ab = off["alphas_cumprod"][int(off["start_step"])]
    g = postprocess_grad(rwn * np.sqrt(ab), mask)
    np.testing.assert_allclose(nchw(g), off["ld_grad"], atol=1e-6)
    g_nr = postprocess_grad(ld_grad(eu, ec, alpha_bar=ab), mask)
    np.testing.assert_allclose(nchw(g_nr), off["ld_grad_no_rank"], atol=1e-7)
    g_sds = postprocess_grad(sds_grad(eu, ec, noise=nhwc(off["noise"]), alpha_bar=ab,
                                      form="official"), mask)
    np.testing.assert_allclose(nchw(g_sds), off["sds_grad"], atol=1e-7)
    np.testing.assert_allclose(nchw(jnp.flip(g, axis=2)), off["mirror_grad"], atol=1e-6)


def test_official_ldis_and_grid(off):
    t = lambda x: jnp.asarray(x.transpose(0, 3, 4, 1, 2))  # [N, 3, 96, H, W] -> [N, H, W, 3, 96]
    v = ldis(t(off["ldis_Ti_prime"]), t(off["ldis_Tj_prime"]), t(off["ldis_Ti"]), t(off["ldis_Tj"]))
    np.testing.assert_allclose(float(v), float(off["ldis"]), rtol=1e-5)
    g = resize_and_grid(nhwc(off["grid_tiles"]), 256)
    np.testing.assert_allclose(nchw(g[None]), off["grid"], atol=1e-5)


def test_injected_loss_reproduces_target_gradient_exactly():
    k1, k2 = jax.random.split(jax.random.key(0))
    lat = jax.random.normal(k1, (2, 8, 8, 4))
    target = jax.random.normal(k2, (2, 8, 8, 4))
    g = jax.jit(jax.grad(injected_loss))(lat, target)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(target))
    # and through a function of the latents: chain rule with the injected gradient
    x = jax.random.normal(k1, (2, 8, 8, 4))
    g2 = jax.grad(lambda x: injected_loss(3.0 * x ** 2, target))(x)
    np.testing.assert_allclose(np.asarray(g2), np.asarray(6.0 * x * target), rtol=1e-6)


def test_rank_weighting_identity_and_rank1():
    s = jax.random.normal(jax.random.key(1), (3, 16, 16, 4))
    same = rank_weighting(s, (1.0, 1.0, 1.0, 1.0), renorm=False)
    np.testing.assert_allclose(np.asarray(same), np.asarray(s), atol=1e-5)
    r1 = np.asarray(rank_weighting(s, (1.0, 0.0, 0.0, 0.0), renorm=False))
    for b in range(3):
        m = np.asarray(s[b]).reshape(-1, 4).T  # [C, hw]
        u, sv, vt = np.linalg.svd(m, full_matrices=False)
        ref = (sv[0] * np.outer(u[:, 0], vt[0])).T.reshape(16, 16, 4)
        np.testing.assert_allclose(r1[b], ref, atol=1e-5)
        assert np.linalg.matrix_rank(r1[b].reshape(-1, 4), tol=1e-4) == 1
    # renorm re-imposes per-channel mean/std of the original score
    rn = np.asarray(rank_weighting(s))
    np.testing.assert_allclose(rn.mean(axis=(1, 2)), np.asarray(s).mean(axis=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(rn.std(axis=(1, 2), ddof=1) + 1e-5,
                               np.asarray(s).std(axis=(1, 2), ddof=1) + 1e-5, rtol=1e-4)


def test_mirror_path_equals_flipping():
    k = jax.random.split(jax.random.key(2), 3)
    lat, lat_m = jax.random.normal(k[0], (1, 8, 8, 4)), jax.random.normal(k[1], (1, 8, 8, 4))
    grad = jax.random.normal(k[2], (1, 8, 8, 4))
    gl, glm = jax.grad(mirror_loss, argnums=(0, 1))(lat, lat_m, grad)
    np.testing.assert_allclose(np.asarray(gl), 0.75 * np.asarray(grad), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(glm), 0.25 * np.asarray(grad)[:, :, ::-1], rtol=1e-6)


def test_grid_places_each_pose_in_its_quadrant():
    tiles = jnp.stack([jnp.full((3, 5, 2), float(i)) for i in range(4)])
    g = np.asarray(make_grid(tiles))
    assert g.shape == (6, 10, 2)
    assert (g[:3, :5] == 0).all() and (g[:3, 5:] == 1).all()
    assert (g[3:, :5] == 2).all() and (g[3:, 5:] == 3).all()
    np.testing.assert_array_equal(np.asarray(split_grid(jnp.asarray(g))), np.asarray(tiles))
    x = jax.random.normal(jax.random.key(3), (4, 64, 64, 3))
    assert resize_and_grid(x, 256).shape == (512, 512, 3)


def test_postprocess():
    g = jnp.array([[[[2000.0, -5000.0, jnp.nan, 300.0]]]])
    m = jnp.array([[[[0.5]]]])
    np.testing.assert_allclose(np.asarray(postprocess_grad(g, m)).ravel(), [1.0, -1.0, 0.0, 0.15])


def test_bsd_is_the_min_norm_point_of_the_segment():
    k1, k2 = jax.random.split(jax.random.key(4))
    eu, ec = jax.random.normal(k1, (2, 4, 4, 4)), jax.random.normal(k2, (2, 4, 4, 4))
    g = np.asarray(bsd_grad(eu, ec, alpha_bar=1.0, guidance_scale=2.0))
    c, d = np.asarray(2.0 * (ec - eu)), np.asarray(eu)
    for b in range(2):
        alphas = np.linspace(0, 1, 2001)
        norms = [np.linalg.norm(a * c[b] + (1 - a) * d[b]) for a in alphas]
        assert np.linalg.norm(g[b]) <= min(norms) + 1e-4


# --- 1-D analytic teacher ------------------------------------------------------------------
# Data given y: a two-component Gaussian mixture with mode ~1.0 and mean 0.1. The diffused
# density is a mixture too, so the teacher's eps is exact: eps = -sqrt(1 - abar) dlog p_t/dx.
_W, _M, _S = np.array([0.7, 0.3]), np.array([1.0, -2.0]), np.array([0.2, 0.2])
_ABAR = np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2)
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(40)
_GH_W = _GH_W / _GH_W.sum()


def _teacher_eps(xt, ab):
    v = ab[:, None] * _S ** 2 + 1 - ab[:, None]
    mu = np.sqrt(ab)[:, None] * _M
    logp = np.log(_W) - 0.5 * np.log(2 * np.pi * v) - 0.5 * (xt[:, None] - mu) ** 2 / v
    r = np.exp(logp - logp.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return -np.sqrt(1 - ab) * (r * -(xt[:, None] - mu) / v).sum(1)


def _expected_grad(theta, objective, t_lo, t_hi):
    """E_{t, eps}[objective gradient] at x_0 = theta (Gauss-Hermite over eps, all t)."""
    ts = np.arange(t_lo, t_hi)
    ab = np.repeat(_ABAR[ts], len(_GH_X))
    e = np.tile(_GH_X, len(ts))
    w = np.tile(_GH_W, len(ts)) / len(ts)
    xt = np.sqrt(ab) * theta + np.sqrt(1 - ab) * e
    ec = _teacher_eps(xt, ab).astype(np.float32).reshape(-1, 1, 1, 1)
    kw = dict(alpha_bar=ab.astype(np.float32), guidance_scale=1.0)
    if objective == "ld":
        g = ld_grad(jnp.zeros_like(ec), ec, form="paper", **kw)
    else:
        g = sds_grad(jnp.zeros_like(ec), ec, noise=e.astype(np.float32).reshape(-1, 1, 1, 1), **kw)
    return float(np.sum(np.asarray(g)[:, 0, 0, 0] * w))


def test_ld_seeks_the_mode_sds_the_mean():
    mode, mean = 1.0, float((_W * _M).sum())
    theta = {}
    for obj, (lo, hi), lr in [("ld", (20, 300), 0.02), ("sds", (20, 980), 1.0)]:
        th = 0.3
        for _ in range(300):
            th -= lr * _expected_grad(th, obj, lo, hi)
        theta[obj] = th
    assert abs(theta["ld"] - mode) < 0.05, theta
    assert abs(theta["sds"] - mean) < abs(theta["ld"] - mean) - 0.3, theta
    assert mean < theta["sds"] < mode, theta


class ObjectiveBoundaries(chex.TestCase):
    """The objectives jitted and un-jitted alike (chex.variants), and a shape mismatch between
    the teacher's two predictions or a gradient and its latents refused at the boundary."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_ld_and_sds_agree_jitted_and_not(self):
        k = jax.random.split(jax.random.key(3), 3)
        eu, ec, noise = (jax.random.normal(x, (2, 8, 8, 4)) for x in k)
        abar = jnp.array([0.3, 0.7])
        ld = self.variant(lambda a, b, c: ld_grad(a, b, alpha_bar=c, guidance_scale=7.5))
        sds = self.variant(lambda a, b, n, c: sds_grad(a, b, noise=n, alpha_bar=c))
        want = 7.5 * (ec - eu) * jnp.sqrt(abar)[:, None, None, None]
        chex.assert_trees_all_close(ld(eu, ec, abar), want, rtol=1e-6)
        chex.assert_tree_all_finite(sds(eu, ec, noise, abar))

    @chex.variants(with_jit=True, without_jit=True)
    def test_shape_mismatch_is_refused(self):
        a, b = jnp.zeros((2, 8, 8, 4)), jnp.zeros((2, 8, 4, 8))
        with self.assertRaises(AssertionError):
            self.variant(lambda x, y: guidance_score(x, y, 7.5))(a, b)
        with self.assertRaises(AssertionError):
            self.variant(injected_loss)(a, b)
        with self.assertRaises(AssertionError):
            self.variant(mirror_loss)(a, a, b)
