"""FID / KID math: closed forms, an independent square root, brute-force MMD, edge cases."""

import numpy as np
import pytest
from scipy import linalg

from jaxhead.metrics import fid as F


def _spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def _psd_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def closed_form(mu1, s1, mu2, s2):
    """Fréchet distance of two Gaussians without sqrtm of a non-symmetric matrix:
    tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2), the latter symmetric PSD (eigh)."""
    r = _psd_sqrt(s1)
    w = np.linalg.eigvalsh(r @ s2 @ r)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.sum(np.sqrt(np.clip(w, 0, None))))


@pytest.fixture
def moments():
    rng = np.random.default_rng(0)
    d = 6
    s1, s2 = _spd(rng, d), _spd(rng, d, 2.0)
    assert not np.allclose(s1 @ s2, s2 @ s1)  # non-commuting: the product is not symmetric
    return rng.standard_normal(d), s1, 0.5 * rng.standard_normal(d), s2


def test_frechet_distance_exact_on_non_commuting_covariances(moments):
    mu1, s1, mu2, s2 = moments
    want = closed_form(mu1, s1, mu2, s2)
    got = F.frechet_distance(mu1, s1, mu2, s2)
    assert abs(got - want) <= 1e-10 * abs(want)
    assert abs(F.frechet_distance(mu2, s2, mu1, s1) - want) <= 1e-10 * abs(want)
    # What a wrong square root would give: sqrt(S1) sqrt(S2) is not (S1 S2)^1/2 here.
    naive = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2)
                  - 2 * np.trace(_psd_sqrt(s1) @ _psd_sqrt(s2)))
    assert abs(naive - want) > 1e-3 * abs(want)
    # ... and the square root of the product is the one scipy.linalg.sqrtm computes.
    c = F._sqrtm(s1 @ s2)
    np.testing.assert_allclose(np.real(c) @ np.real(c), s1 @ s2, rtol=1e-9, atol=1e-12)


def test_fid_of_gaussian_samples_matches_true_moments(moments):
    """200k samples per set in 6-d. The estimate's relative error over 10 seeds had a std of
    1.6e-3 (sampling error of the moments, O(1/sqrt(N)); FID's positive bias O(d^2/N) is
    smaller); 1 % is about 6 sigma."""
    mu1, s1, mu2, s2 = moments
    rng = np.random.default_rng(1)
    n = 200_000
    x = rng.multivariate_normal(mu1, s1, n)
    y = rng.multivariate_normal(mu2, s2, n)
    want = closed_form(mu1, s1, mu2, s2)
    assert abs(F.fid(x, y) - want) <= 0.01 * want, (F.fid(x, y), want)


def test_fid_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(2)
    f = rng.standard_normal((300, 32)) @ rng.standard_normal((32, 32))
    assert abs(F.fid(f, f)) <= 1e-8 * np.trace(np.cov(f, rowvar=False))
    mu, s = F.feature_stats(f)
    np.testing.assert_allclose(s, np.cov(f.T), rtol=1e-12)
    assert mu.dtype == s.dtype == np.float64


def test_singular_product_and_imaginary_part(monkeypatch):
    rng = np.random.default_rng(3)
    f1, f2 = rng.standard_normal((5, 16)), rng.standard_normal((7, 16))  # rank-deficient
    assert np.isfinite(F.fid(f1, f2))
    mu1, s1 = F.feature_stats(f1)
    mu2, s2 = F.feature_stats(f2)
    calls = []

    def flaky(a):  # the first square root fails, as on singular products with older scipy
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else linalg.sqrtm(a)

    monkeypatch.setattr(F, "_sqrtm", flaky)
    with pytest.warns(RuntimeWarning, match="adding 1e-06"):
        got = F.frechet_distance(mu1, s1, mu2, s2)
    e = 1e-6 * np.eye(16)
    np.testing.assert_allclose(calls[1], (s1 + e) @ (s2 + e))
    want = closed_form(mu1, s1 + e, mu2, s2 + e)  # sqrtm of a nearly singular product: ~1e-6
    assert abs(got - want) < 1e-5 * want
    monkeypatch.setattr(F, "_sqrtm", lambda a: np.eye(len(a)) * (1 + 0.5j))
    with pytest.raises(ValueError, match="imaginary"):
        F.frechet_distance(mu1, s1, mu2, s2)
    monkeypatch.setattr(F, "_sqrtm", lambda a: np.eye(len(a)) * (1 + 1e-9j))
    assert isinstance(F.frechet_distance(mu1, s1, mu2, s2), float)


def brute_force_mmd2(x, y):
    """Unbiased MMD^2 with k = (x.y/d + 1)^3, one pair at a time."""
    m, d = x.shape
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("gram_limit", [F.GRAM_LIMIT, 0])  # cached Gram / per-subset kernels
def test_kid_matches_brute_force(monkeypatch, gram_limit):
    monkeypatch.setattr(F, "GRAM_LIMIT", gram_limit)
    rng = np.random.default_rng(4)
    f1, f2 = rng.standard_normal((9, 3)), rng.standard_normal((11, 3)) + 0.3
    mean, std = F.kid(f1, f2, num_subsets=4, subset_size=6, seed=7)
    draw = np.random.RandomState(7)  # torch-fidelity's draws: set 1 then set 2, per subset
    ref = []
    for _ in range(4):
        i, j = draw.choice(9, 6, replace=False), draw.choice(11, 6, replace=False)
        ref.append(brute_force_mmd2(f1[i], f2[j]))
    assert abs(mean - np.mean(ref)) <= 1e-12 * np.abs(ref).max()
    assert abs(std - np.std(ref)) <= 1e-12 * np.abs(ref).max()
    # subset size clipped to the smaller set (9): every subset of set 1 is all of it
    full = F.kid(f1, f2, num_subsets=2, subset_size=1000, seed=0)
    assert np.isfinite(full).all()


def test_kid_near_zero_for_one_distribution_and_grows_with_shift():
    rng = np.random.default_rng(5)
    d = 16
    x = rng.standard_normal((400, d))
    y = rng.standard_normal((400, d))
    kw = dict(num_subsets=20, subset_size=200, seed=0)
    same, same_std = F.kid(x, y, **kw)
    shifted = [F.kid(x, y + s, **kw)[0] for s in (0.25, 0.5, 1.0)]
    assert abs(same) < 3 * same_std + 1e-3 * shifted[0]  # unbiased: may be slightly negative
    assert abs(same) < 0.1 * shifted[0]
    assert shifted[0] < shifted[1] < shifted[2]


def test_shape_errors():
    with pytest.raises(ValueError, match="shapes do not match"):
        F.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="feature sizes differ"):
        F.kid(np.zeros((5, 3)), np.zeros((5, 4)), seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        F.kid(np.zeros((1, 3)), np.zeros((5, 3)), seed=0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        F.fid(np.zeros(5), np.zeros(5))
