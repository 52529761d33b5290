"""Auxiliary terms: the official training's Tweedie MSE and LDIS, and the regularising terms of
the baselines and related systems (relative distances, displacement variance, directional CLIP,
identity, StyleGAN-Fusion's diffusion regularizers, 3DArtmator's image-direction loss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def tweedie_mse(x0_hat: Array, image: Array) -> Array:
    """``mean((x0_hat - (image + 1) / 2)^2)``: the teacher's decoded one-step x0 estimate
    (``[B, H, W, 3]`` in [0, 1], no gradient) pulls the render (in [-1, 1])."""
    return jnp.mean(jnp.square(jax.lax.stop_gradient(x0_hat) - 0.5 * (image + 1)))


def ldis(ti_prime: Array, tj_prime: Array, ti: Array, tj: Array, *, plane_axis: int = -2,
         eps: float = 1e-8) -> Array:
    """Relative-distance loss on tri-planes of two batches (arXiv 2312.16837):
    ``mean | |T'i - T'j|^2 / (|Ti - Tj|^2 + eps) - 1 |`` with the norm over ``plane_axis``.

    Primes are the trainable generator's planes, the others the frozen generator's. With
    jaxhead's planes ``[N, H, W, 288]`` reshape to ``[N, H, W, 3, 96]`` (plane axis -2).
    """
    num = jnp.sum(jnp.square(ti_prime - tj_prime), axis=plane_axis)
    den = jnp.sum(jnp.square(ti - tj), axis=plane_axis) + eps
    return jnp.mean(jnp.abs(num / den - 1))


# --- regularising terms of the baselines and related systems (the objective zoo) -----------


def pair_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays ``(i, j)`` of the ``n (n - 1) / 2`` unordered pairs ``i < j``."""
    i, j = np.triu_indices(n, k=1)
    return i, j


def relative_distance(t_prime: Array, t: Array, *, plane_axis: int = -2,
                      eps: float = 1e-8) -> Array:
    """DiffusionGAN3D's relative distance loss (Lei et al. 2023, arXiv 2312.16837) within one
    batch of ``B >= 2`` identities: over all pairs ``i < j``,
    ``mean | |T'_i - T'_j|^2 / (|T_i - T_j|^2 + eps) - 1 |`` (norm over ``plane_axis``, mean
    over pairs and positions). Primes: the stylized generator's tri-planes ``[B, ...]``; the
    others the frozen generator's. Scaling all distances by one factor is penalised: the
    distances are kept, not only their ratios between pairs."""
    if t_prime.shape[0] < 2:
        raise ValueError(f"relative_distance needs a batch of >= 2 identities, got "
                         f"{t_prime.shape[0]}")
    i, j = pair_indices(t_prime.shape[0])
    return ldis(t_prime[i], t_prime[j], t[i], t[j], plane_axis=plane_axis, eps=eps)


def displacement_variance(depth: Array, depth_frozen: Array, mask: Array, *,
                          eps: float = 1e-8) -> Array:
    """Consistent-displacement variance (StyleMM's CDL, Lee et al. 2025, adapted to a 3D GAN):
    the displacement ``D_i = depth_i - depth_frozen_i`` of each identity ``i`` (renders from
    one shared camera, ``[B, H, W(, 1)]``), its variance across the batch at each pixel,
    averaged over the pixels inside the frozen heads: ``sum_p m_p Var_i(D_i,p) / sum_p m_p``
    with ``m`` ``[H, W(, 1)]`` the (product of the) frozen masks (no gradient). Var is the
    population variance (divide by ``B``). Zero when every head is displaced the same way;
    a displacement shared by all identities changes nothing.

    Gradient (closed form): ``d/d depth_i = 2 m (D_i - mean_k D_k) / (B sum m)``."""
    d = depth - jax.lax.stop_gradient(depth_frozen)
    m = jax.lax.stop_gradient(mask)
    var = jnp.mean(jnp.square(d - jnp.mean(d, axis=0, keepdims=True)), axis=0)
    return jnp.sum(m * var) / (jnp.sum(m) + eps)


def unit(x: Array, eps: float = 1e-8) -> Array:
    """``x / max(|x|, eps)`` along the last axis."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def clip_direction_loss(img_emb: Array, img_emb_frozen: Array, text_dir: Array) -> Array:
    """StyleGAN-NADA's directional CLIP loss (Gal et al. 2022):
    ``1 - cos(E_I(G_train(w)) - E_I(G_frozen(w)), E_T(target) - E_T(source))`` per sample
    ``[B]``, each image embedding normalised before the difference (as NADA's ``CLIPLoss``).
    ``text_dir`` ``[D]``: the (normalised) text direction. A zero image change (the first
    step) gives 1 with a finite gradient."""
    d = unit(unit(img_emb) - unit(jax.lax.stop_gradient(img_emb_frozen)))
    return 1.0 - jnp.sum(d * unit(jax.lax.stop_gradient(text_dir)), axis=-1)


def image_direction_loss(img_emb: Array, img_emb_frozen: Array, guide: Array, *,
                         eps: float = 1e-3) -> Array:
    """3DArtmator's style-directional difference loss (Zheng et al., TVCG 2024, Eq. 7) per
    sample ``[N]``: ``1 - cos(delta_guide, delta_opt)`` with ``delta_opt = E(I_trn) - E(I_ori)``
    (trained and frozen renders of one w from one view, ``[N, D]``) and ``guide`` ``[D]`` =
    ``delta_guide = E(I_ref) - E(I*_ori)`` (the art portrait vs the frozen generator's render of
    its inversion at the reference camera). ``E`` is the CLIP image embedding normalised to
    unit length before the difference (as NADA's ``CLIPLoss`` and the ``nada`` term do; pass
    ``guide`` made the same way, :func:`unit` of each embedding).

    The cosine is ``<unit(guide), d> / sqrt(|d|^2 + eps^2)``: ``1 - cos`` exactly for
    ``eps = 0``, and within ``eps^2 / (2 |d|^2)`` of it otherwise. At initialisation the trained
    generator equals the frozen one, ``d = 0``, and the plain cosine is undefined; here the
    value is 1 and the gradient ``-unit(guide) / eps`` (finite, pointing along the guide). A
    clamped norm (``max(|d|, 1e-8)``, torch's ``cosine_similarity``) would give a 1e8 gradient
    there, whose square then dominates Adam's second moment for thousands of steps."""
    d = unit(img_emb) - unit(jax.lax.stop_gradient(img_emb_frozen))
    g = unit(jax.lax.stop_gradient(guide))
    return 1.0 - jnp.sum(d * g, axis=-1) * jax.lax.rsqrt(jnp.sum(d * d, axis=-1) + eps * eps)


def identity_loss(emb: Array, emb_frozen: Array) -> Array:
    """``1 - cos(E(stylized), E(frozen))`` per sample ``[B]`` of face-recognition embeddings
    ``[B, D]`` (ArcFace; the paper's ID metric as a loss)."""
    return 1.0 - jnp.sum(unit(emb) * unit(jax.lax.stop_gradient(emb_frozen)), axis=-1)


def _rescale(x: Array) -> Array:
    """StyleGAN-Fusion's ``rescale``: ``x sqrt(numel) / |x|`` per sample (unit RMS)."""
    axes = tuple(range(1, x.ndim))
    n = np.prod(x.shape[1:])
    return x * jnp.sqrt(n) / jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=True))


def sgf_directional_grad(eps_cfg: Array, eps_cfg_frozen: Array, alpha_bar: Array) -> Array:
    """StyleGAN-Fusion's diffusion directional regularizer (Song et al., WACV 2024; the
    official ``train_directionalLoss_step``, mode 1): the stylized and the frozen latents
    noised with the same noise at the same t, their guided predictions compared,
    ``dL/dz = (1 - abar) (eps_cfg(x_t) - eps_cfg(x_t^frozen))`` (injected into the stylized
    latents). ``alpha_bar`` ``[B]``; predictions ``[B, h, w, 4]``."""
    eps_cfg, eps_cfg_frozen = jax.lax.stop_gradient((eps_cfg, eps_cfg_frozen))
    ab = jnp.asarray(alpha_bar).reshape((-1,) + (1,) * (eps_cfg.ndim - 1))
    return (1 - ab) * (eps_cfg - eps_cfg_frozen)


def sgf_reconstruction_grad(x_t: Array, eps_cfg: Array, latents_frozen: Array,
                            alpha_bar: Array) -> Array:
    """StyleGAN-Fusion's reconstruction regularizer (official code, mode 2): with
    ``x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar)`` and ``L = mean((x0_hat - z_frozen)^2)``,
    ``g = dL/d eps = -2 sqrt(1 - abar) (x0_hat - z_frozen) / (sqrt(abar) N)`` (N: elements
    per sample), ``dL/dz = (1 - abar) (rescale(eps) - rescale(g))``, rescale to unit RMS per
    sample."""
    x_t, eps_cfg, z0 = jax.lax.stop_gradient((x_t, eps_cfg, latents_frozen))
    ab = jnp.asarray(alpha_bar).reshape((-1,) + (1,) * (eps_cfg.ndim - 1))
    x0 = (x_t - jnp.sqrt(1 - ab) * eps_cfg) / jnp.sqrt(ab)
    n = np.prod(eps_cfg.shape[1:])
    g = -2.0 * jnp.sqrt(1 - ab) / jnp.sqrt(ab) * (x0 - z0) / n
    return (1 - ab) * (_rescale(eps_cfg) - _rescale(g))
