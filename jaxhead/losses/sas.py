"""The Style Aligned Sampling loss (SAS; Jiang et al., "Fast 3D Stylized Gaussian Portrait
Generation From a Single Image With Style Aligned Sampling Loss", Sec. III-B.2, Eqs. 12-14):
the whitening-colouring transform, the loss, and the objective ``sas`` built from them. The
style statistics come from a bank of teacher samples of the prompt
(:mod:`jaxhead.training.style_bank`).

The printed transform is not the identity when the statistics already match; the correct
whitening-colouring form is

    z' = C_s^{1/2} C_z^{-1/2} (z - mu_z) + mu_s

per sample, over the 4 latent channels (``C`` channel covariances over the pixels, symmetric
matrix square roots): it is the identity when ``(mu_z, C_z) = (mu_s, C_s)``, and its output
has exactly the style's mean and covariance.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxhead.losses.distillation import cfg_eps, sds_weight

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


def _per_sample(a: Array | float, like: Array) -> Array:
    """Scalar or ``[B]`` -> broadcastable to ``like`` ``[B, h, w, C]``."""
    a = jnp.asarray(a, like.dtype)
    return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def one_step_x0(latents: Array, eps_hat: Array, noise: Array, alpha_bar: Array | float) -> Array:
    """The one-step estimate ``x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar)`` of the
    clean latents ``z`` noised as ``x_t = sqrt(abar) z + sqrt(1 - abar) noise``, written as
    ``z - sqrt((1 - abar) / abar) (eps_hat - noise)`` (the paper's Eq. 12, ``z' = alpha_t z +
    beta_t (eps_p - eps)``, with ``alpha_t = 1``, ``beta_t = -sqrt((1 - abar) / abar)``).
    ``[B, h, w, C]``; ``alpha_bar`` scalar or ``[B]``."""
    ab = _per_sample(alpha_bar, latents)
    return latents - jnp.sqrt((1 - ab) / ab) * (eps_hat - noise)


def sas_grad(eps_uncond: Array, eps_cond: Array, *, noise: Array, alpha_bar: Array | float,
             latents: Array, style_stats: Mapping[str, Array],
             guidance_scale: float | Array = 50.0, weighting: str = "sds") -> Array:
    """SAS (Eqs. 12-14): ``dL/dz = w(t) (z - z'_m)``, the gradient of
    ``L = 1/2 w(t) |z - sg(z'_m)|^2`` w.r.t. the clean latents ``z``, where

        x0_hat = (x_t - sqrt(1 - abar) eps_cfg) / sqrt(abar)       (one step, Eq. 12)
        z'_m   = C_s^{1/2} C_g^{-1/2} (x0_hat - mu_g) + mu_s       (Eq. 13, corrected)

    ``eps_cfg = eps_u + s (eps_c - eps_u)`` (the paper's SAS guidance: ``s = 50``), ``(mu_g,
    C_g)`` the channel mean and covariance of each sample's ``x0_hat`` over its pixels and
    ``style_stats = {"mean": [C], "cov": [C, C]}`` those of the style bank (teacher samples
    of the prompt: 20 images, CFG 7.5, 20 steps in the paper). The printed Eq. 13 (``V_s^{-1/2}``,
    ``+ mu_g``) is not the identity on matching statistics; :func:`whiten_colour` is.
    Eq. 14 prints ``w(t) (z'_m - z)``, the negative of the loss's gradient: descending the
    loss moves ``z`` towards ``z'_m``. ``w(t)`` is not defined in the paper (the
    same ``omega(t)`` as its SDS, Eq. 8, from DreamFusion): ``weighting`` as
    :func:`jaxhead.losses.sds_weight` (``"sds"``: ``1 - abar``). ``latents`` ``[B, h, w, C]``
    (no gradient), ``alpha_bar`` must be that of the timestep ``x_t`` was noised to."""
    eps_uncond, eps_cond, noise, latents = jax.lax.stop_gradient(
        (eps_uncond, eps_cond, noise, latents))
    x0 = one_step_x0(latents, cfg_eps(eps_uncond, eps_cond, guidance_scale), noise, alpha_bar)
    z_m = whiten_colour(x0, style_stats["mean"], style_stats["cov"])
    w = sds_weight(_per_sample(alpha_bar, latents), weighting)
    return w * (latents - z_m)
