"""ΔD (masked RMS depth difference) and the pairwise diversity metrics: known answers, the
mask, the excluded diagonal."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxhead.metrics.depth import depth_difference
from jaxhead.metrics.diversity import pairwise_id_similarity, pairwise_lpips
from jaxhead.models.lpips import lpips, param_shapes

RANGE = 3.3 - 2.25  # PanoHead's ray_end - ray_start


def _depth_and_mask(seed=0, n=3, size=16):
    rng = np.random.default_rng(seed)
    d = rng.uniform(2.4, 3.0, (n, size, size, 1)).astype(np.float32)
    m = np.zeros_like(d)
    m[:, 3:13, 4:12] = 1.0
    return d, m


def test_depth_difference_known_answers():
    d, m = _depth_and_mask()
    f = jax.jit(depth_difference, static_argnames="depth_range")
    np.testing.assert_array_equal(np.asarray(f(d, d, m, depth_range=RANGE)), 0.0)
    for c in (0.01, 0.02, 0.05):  # a constant offset c gives exactly c / range, per view
        np.testing.assert_allclose(np.asarray(f(d + c, d, m, depth_range=RANGE)), c / RANGE,
                                   rtol=2e-4)
    np.testing.assert_allclose(np.asarray(f(d + 0.05, d, m)), 0.05, rtol=2e-4)  # world units
    # pixels outside the mask, even inf / NaN background, do not count
    junk = d + 0.02
    junk[m == 0] = np.where(np.arange((m == 0).sum()) % 2, np.inf, np.nan)
    np.testing.assert_allclose(np.asarray(f(junk, d, m, depth_range=RANGE)), 0.02 / RANGE,
                               rtol=2e-4)
    # soft mask: weights 1 and 3 on differences 1 and 2 -> sqrt((1 + 3 * 4) / 4)
    a, b = np.zeros((1, 1, 2), np.float32), np.array([[[1.0, 2.0]]], np.float32)
    w = np.array([[[1.0, 3.0]]], np.float32)
    np.testing.assert_allclose(np.asarray(depth_difference(a, b, w)), np.sqrt(13 / 4),
                               rtol=1e-6)
    assert np.isnan(np.asarray(depth_difference(a, b, np.zeros_like(w)))).all()
    with pytest.raises(ValueError, match="one shape"):
        depth_difference(d, d[..., 0], m)


def test_pairwise_id_similarity_excludes_the_diagonal():
    rng = np.random.default_rng(1)
    e = rng.standard_normal((4, 32)).astype(np.float32)
    same = np.repeat(e[:1], 3, axis=0) * np.array([[1.0], [2.0], [0.5]], np.float32)
    np.testing.assert_allclose(float(pairwise_id_similarity(same)), 1.0, rtol=1e-6)
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    cos = u @ u.T
    np.testing.assert_allclose(float(pairwise_id_similarity(e[:2])), cos[0, 1], rtol=1e-5)
    want = np.mean([cos[i, j] for i in range(4) for j in range(i + 1, 4)])
    np.testing.assert_allclose(float(jax.jit(pairwise_id_similarity)(e)), want, rtol=1e-5)
    dup = e.copy()
    dup[3] = e[0]  # one identity twice: its pair scores 1
    want_dup = np.mean([(u[[0, 1, 2, 0]] @ u[[0, 1, 2, 0]].T)[i, j]
                        for i in range(4) for j in range(i + 1, 4)])
    np.testing.assert_allclose(float(pairwise_id_similarity(dup)), want_dup, rtol=1e-5)
    assert float(pairwise_id_similarity(dup)) > float(pairwise_id_similarity(e)) + 0.1
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_id_similarity(e[:1])


def test_pairwise_lpips_excludes_the_diagonal():
    """Against LPIPS of the three pairs computed directly (``chunk=2``: the pairs go through
    the network in two calls)."""
    rng = np.random.default_rng(2)
    params = jax.tree.map(  # random AlexNet and lin weights, drawn on the host (no compiles)
        lambda s: jnp.asarray(np.abs(rng.standard_normal(s)) / np.sqrt(np.prod(s[:-1] or s)),
                              jnp.float32), param_shapes(), is_leaf=lambda s: isinstance(s, tuple))
    x = jnp.asarray(rng.uniform(-1, 1, (3, 48, 48, 3)).astype(np.float32))
    pl = jax.jit(lambda p, im: pairwise_lpips(p, im, chunk=2))
    pairs = jax.jit(lpips)(params, x[jnp.array([0, 0, 1])], x[jnp.array([1, 2, 2])])
    got = pl(params, x)
    np.testing.assert_allclose(float(got), float(jnp.mean(pairs)), rtol=1e-5)
    assert abs(float(pl(params, jnp.repeat(x[:1], 3, axis=0)))) < 1e-12  # one identity x3
    dup = x.at[2].set(x[0])  # pairs (0,1), (0,0'), (1,0'): mean of d01, 0, d01
    np.testing.assert_allclose(float(pl(params, dup)), 2 * float(pairs[0]) / 3, rtol=1e-5)
    assert float(pl(params, dup)) < float(got)
