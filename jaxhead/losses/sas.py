"""The whitening-colouring transform of the Style Aligned Sampling loss (SAS, "Fast 3D
Stylized Gaussian Portrait Generation", the paper's Eq. for ``z'_m``), with the style
statistics passed in (gathering them from a bank of teacher samples comes with the sampler).

The printed transform is not the identity when the statistics already match; the correct
whitening-colouring form is

    z' = C_s^{1/2} C_z^{-1/2} (z - mu_z) + mu_s

per sample, over the 4 latent channels (``C`` channel covariances over the pixels, symmetric
matrix square roots): it is the identity when ``(mu_z, C_z) = (mu_s, C_s)``, and its output
has exactly the style's mean and covariance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def channel_stats(z: Array) -> tuple[Array, Array]:
    """Per-sample channel mean ``[B, C]`` and covariance ``[B, C, C]`` over the pixels of
    ``z`` ``[B, h, w, C]`` (population: divide by ``h w``)."""
    b, h, w, c = z.shape
    x = z.reshape(b, h * w, c)
    mu = jnp.mean(x, axis=1)
    d = x - mu[:, None]
    return mu, jnp.einsum("bnc,bnd->bcd", d, d, precision=jax.lax.Precision.HIGHEST) / (h * w)


def _sym_pow(cov: Array, power: float, eps: float) -> Array:
    """``cov^power`` of symmetric PSD matrices ``[..., C, C]`` (eigenvalues floored at eps)."""
    vals, vecs = jnp.linalg.eigh(cov)
    vals = jnp.maximum(vals, eps) ** power
    return jnp.einsum("...ij,...j,...kj->...ik", vecs, vals, vecs,
                      precision=jax.lax.Precision.HIGHEST)


def whiten_colour(z: Array, style_mean: Array, style_cov: Array, *, eps: float = 1e-8) -> Array:
    """``z`` ``[B, h, w, C]`` mapped onto the style statistics (``style_mean`` ``[C]``,
    ``style_cov`` ``[C, C]``): ``C_s^{1/2} C_z^{-1/2} (z - mu_z) + mu_s`` per sample."""
    b, h, w, c = z.shape
    mu, cov = channel_stats(z)
    t = jnp.einsum("ij,bjk->bik", _sym_pow(style_cov, 0.5, eps), _sym_pow(cov, -0.5, eps),
                   precision=jax.lax.Precision.HIGHEST)
    x = z.reshape(b, h * w, c) - mu[:, None]
    out = jnp.einsum("bij,bnj->bni", t, x, precision=jax.lax.Precision.HIGHEST) + style_mean
    return out.reshape(b, h, w, c)


def sas_loss(z: Array, z_mapped: Array, weight: Array | float = 1.0) -> Array:
    """``1/2 w(t) |z - sg(z'_m)|^2`` per sample ``[B]`` (the SAS loss; ``weight`` scalar or
    ``[B]``)."""
    d = z - jax.lax.stop_gradient(z_mapped)
    return 0.5 * jnp.asarray(weight) * jnp.sum(d * d, axis=tuple(range(1, z.ndim)))
