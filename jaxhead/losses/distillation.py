"""Score-distillation objectives as pure functions of the teacher's outputs.

Every function maps teacher outputs (``eps_uncond``, ``eps_cond`` ``[B, h, w, 4]`` NHWC
latents), the injected ``noise`` and ``alpha_bar`` (``alphas_cumprod`` at the chosen step,
scalar or ``[B]``) to a latent-space gradient ``dL/dlatents`` of the same shape. Turn it into a
loss with :func:`injected_loss`, whose autodiff gradient w.r.t. the latents is exactly that
gradient, so ``jax.grad`` carries it through the VAE encoder and the generator. Nothing here
backpropagates through the teacher (its outputs are wrapped in ``stop_gradient``).

``score_transform`` (optional, e.g. the rank weighting of Eq. 11) is applied to the teacher's
score estimate *before* the objective subtracts the injected noise or weights it by timestep,
as the official code does. Objectives are registered by name in
:mod:`jaxhead.losses.objectives`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp

Array = jax.Array


def _bcast(a: Array | float, like: Array) -> Array:
    """Scalar or per-sample ``[B]`` -> broadcastable to ``[B, h, w, C]``."""
    a = jnp.asarray(a, like.dtype)
    return a.reshape(a.shape + (1,) * (like.ndim - a.ndim)) if a.ndim else a


def cfg_eps(eps_uncond: Array, eps_cond: Array, guidance_scale: float | Array) -> Array:
    """Classifier-free guided noise prediction ``eps_u + s (eps_c - eps_u)``."""
    chex.assert_equal_shape([eps_uncond, eps_cond])
    return eps_uncond + _bcast(guidance_scale, eps_cond) * (eps_cond - eps_uncond)


def guidance_score(eps_uncond: Array, eps_cond: Array, guidance_scale: float | Array) -> Array:
    """The official code's "score": ``s (eps_c - eps_u)`` (the guidance term alone)."""
    chex.assert_equal_shape([eps_uncond, eps_cond])
    return _bcast(guidance_scale, eps_cond) * (eps_cond - eps_uncond)


ScoreTransform = Callable[[Array], Array]


def _identity(x: Array) -> Array:
    return x


def ld_grad(eps_uncond: Array, eps_cond: Array, *, alpha_bar: float | Array,
            guidance_scale: float | Array = 7.5, form: str = "official",
            noise: Array | None = None, score_transform: ScoreTransform | None = None) -> Array:
    """Likelihood distillation (Eq. 10): ``dL/dx_0 = -grad_{x_t} log p(x_t|y) sqrt(abar_t)``.

    ``form="official"`` (the released code): the score is the guidance term alone,
    ``s (eps_c - eps_u) sqrt(abar)``. ``form="paper"``: the full CFG noise prediction as the
    score, ``grad log p = -eps_cfg / sqrt(1 - abar)``, i.e.
    ``eps_cfg sqrt(abar) / sqrt(1 - abar)``. ``noise`` is unused (LD does not subtract it).

    ``score_transform`` is applied to the weighted score (``sqrt(abar) s (eps_c - eps_u)``):
    a positive per-sample scale commutes with the rank weighting (SVD and the re-imposed
    channel moments), so this equals the official ``sqrt(abar) W(score)`` up to the 1e-5 that
    the moment matching adds to the standard deviations, and keeps jaxhead's recorded
    trajectories.
    """
    del noise
    t = score_transform or _identity
    eps_uncond, eps_cond = jax.lax.stop_gradient((eps_uncond, eps_cond))
    ab = _bcast(alpha_bar, eps_cond)
    if form == "official":
        return t(guidance_score(eps_uncond, eps_cond, guidance_scale) * jnp.sqrt(ab))
    if form == "paper":
        return t(cfg_eps(eps_uncond, eps_cond, guidance_scale) * jnp.sqrt(ab / (1 - ab)))
    raise ValueError(f"unknown LD form {form!r} (official | paper)")


def sds_grad(eps_uncond: Array, eps_cond: Array, *, noise: Array, alpha_bar: float | Array,
             guidance_scale: float | Array = 7.5, form: str = "standard",
             score_transform: ScoreTransform | None = None) -> Array:
    """Score distillation sampling, ``w(t) (T(eps_hat) - noise)``.

    ``form="standard"`` (DreamFusion): ``eps_hat = eps_cfg``, ``w = 1 - abar``.
    ``form="official"`` (the stylization code's SDS switch): ``eps_hat = s (eps_c - eps_u)``,
    ``w = sqrt(1 - abar)``. ``T`` (``score_transform``, e.g. rank weighting) acts on the
    score alone, never on the injected noise (the official order).
    """
    t = score_transform or _identity
    eps_uncond, eps_cond, noise = jax.lax.stop_gradient((eps_uncond, eps_cond, noise))
    ab = _bcast(alpha_bar, eps_cond)
    if form == "standard":
        return (1 - ab) * (t(cfg_eps(eps_uncond, eps_cond, guidance_scale)) - noise)
    if form == "official":
        return jnp.sqrt(1 - ab) * (t(guidance_score(eps_uncond, eps_cond, guidance_scale))
                                   - noise)
    raise ValueError(f"unknown SDS form {form!r} (standard | official)")


def bsd_grad(eps_uncond: Array, eps_cond: Array, *, alpha_bar: float | Array,
             guidance_scale: float | Array = 15.0, noise: Array | None = None,
             score_transform: ScoreTransform | None = None) -> Array:
    """Balanced score distillation (PlacidDreamer): the point of the segment between the
    classifier term ``c = s (eps_c - eps_u)`` and the denoising term ``d = eps_u`` closest to
    the origin, ``a c + (1 - a) d`` with ``a = clip(<d - c, d> / |d - c|^2, 0, 1)`` per sample,
    weighted by ``sqrt(abar)``; ``score_transform`` acts on the combined score.
    """
    del noise
    t = score_transform or _identity
    eps_uncond, eps_cond = jax.lax.stop_gradient((eps_uncond, eps_cond))
    c = guidance_score(eps_uncond, eps_cond, guidance_scale)
    d = eps_uncond
    axes = tuple(range(1, c.ndim))
    diff = d - c
    a = jnp.sum(diff * d, axis=axes) / jnp.sum(diff * diff, axis=axes)
    a = _bcast(jnp.clip(jnp.nan_to_num(a, nan=0.0), 0.0, 1.0), c)
    return t(a * c + (1 - a) * d) * jnp.sqrt(_bcast(alpha_bar, c))


def sds_weight(alpha_bar: Array, weighting: str) -> Array:
    """Timestep weight ``w(t)`` of the SDS family: ``"sds"`` DreamFusion's ``1 - abar``
    (sigma_t^2), ``"uniform"`` 1, ``"fantasia3d"`` ``sqrt(abar) (1 - abar)`` (threestudio's
    names)."""
    if weighting == "sds":
        return 1 - alpha_bar
    if weighting == "uniform":
        return jnp.ones_like(alpha_bar)
    if weighting == "fantasia3d":
        return jnp.sqrt(alpha_bar) * (1 - alpha_bar)
    raise ValueError(f"unknown weighting {weighting!r} (sds | uniform | fantasia3d)")


def csd_grad(eps_uncond: Array, eps_cond: Array, *, alpha_bar: float | Array,
             guidance_scale: float | Array = 7.5, weighting: str = "sds",
             noise: Array | None = None, score_transform: ScoreTransform | None = None) -> Array:
    """Classifier score distillation (Yu et al. 2023, arXiv 2310.19415, Eq. 7): the guidance
    term alone, ``dL/dz = w(t) T(s (eps_c - eps_u))`` (no injected noise, no unconditional
    term; ``noise`` is unused), ``w = 1 - abar`` by default.

    Checked against the official code (CVMI-Lab/Classifier-Score-Distillation,
    ``stable_diffusion_triple_guidance.py`` with ``configs/csd-sd-refine.yaml``): its gradient
    is ``(1 - abar_t)(eps(y) - w_n eps(y_neg) - (1 - w_n) eps(empty))`` with coefficient 1
    on ``eps(y)`` (the paper: the scale only rescales the learning rate), no noise term, and
    ``t ~ U(0.02, 0.5)`` of the 1000 timesteps; the registry uses ``s = 1`` and that range.
    Its negative-prompt weight ``w_n`` (annealed 1 -> 0.5 there) is not modelled: ``eps_u`` is
    the prediction for ``config.negative_prompt`` (``""`` by default: ``eps(empty)``), i.e.
    ``w_n = 1``.
    """
    del noise
    t = score_transform or _identity
    eps_uncond, eps_cond = jax.lax.stop_gradient((eps_uncond, eps_cond))
    w = sds_weight(_bcast(alpha_bar, eps_cond), weighting)
    return w * t(guidance_score(eps_uncond, eps_cond, guidance_scale))


NFSD_NEGATIVE = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, "
                 "dark, low-resolution, gloomy")


def nfsd_grad(eps_uncond: Array, eps_cond: Array, *, alpha_bar: float | Array,
              timestep: Array, eps_prompts: dict[str, Array], guidance_scale: float | Array = 7.5,
              t_switch: int = 200, weighting: str = "sds", noise: Array | None = None,
              score_transform: ScoreTransform | None = None) -> Array:
    """Noise-free score distillation (Katzir et al., ICLR 2024, arXiv 2310.17590, Eq. 8):
    ``dL/dz = w(t) T(delta_D + s delta_C)`` with the condition direction
    ``delta_C = eps_c - eps_u`` and the in-domain direction ``delta_D = eps_u`` for
    ``t < t_switch`` (200 of 1000: little noise left, ``eps_u`` is the domain correction) and
    ``delta_D = eps_u - eps_neg`` otherwise, ``eps_neg`` the prediction for the negative
    prompt ``eps_prompts["negative_quality_prompt"]`` (:data:`NFSD_NEGATIVE`). The injected
    noise is never subtracted (``noise`` unused). ``timestep`` ``[B]``: the diffusion timestep
    of each row (0..999).

    Checked against the paper (no official code is public): ``delta_C = eps(y) - eps(empty)``,
    ``delta_D = eps(empty)`` if ``t < 200`` else ``eps(empty) - eps(p_neg)``, nominal CFG
    ``s = 7.5`` and the negative prompt above. ``eps_u`` is the prediction for
    ``config.negative_prompt``, which must stay ``""`` (the default) for the paper's
    ``eps(empty)``. ``w(t)`` and the timestep range are not given there; threestudio's SDS
    defaults (``1 - abar``, ``t ~ U(0.02, 0.98)``) are used.
    """
    del noise
    tr = score_transform or _identity
    eps_neg = eps_prompts["negative_quality_prompt"]
    eps_uncond, eps_cond, eps_neg = jax.lax.stop_gradient((eps_uncond, eps_cond, eps_neg))
    low = _bcast(jnp.asarray(timestep) < t_switch, eps_cond)
    delta_d = jnp.where(low, eps_uncond, eps_uncond - eps_neg)
    score = delta_d + guidance_score(eps_uncond, eps_cond, guidance_scale)
    return sds_weight(_bcast(alpha_bar, eps_cond), weighting) * tr(score)


def blend_eps(eps_style: Array, eps_neutral: Array, weight: float | Array) -> Array:
    """HeadSculpt's identity-aware editing blend (IESD, HeadSculpt Eq. 7):
    ``w eps(x_t; y_hat) + (1 - w) eps(x_t; y)`` of the style-prompt and neutral-prompt
    predictions at the same ``x_t``, noise and control (``w = omega_e``, 0.6 in the paper).
    Both CFG branches share ``eps_uncond``, so blending the conditional predictions before
    guidance equals blending the two guided predictions."""
    w = _bcast(weight, eps_style)
    return w * eps_style + (1 - w) * eps_neutral


def rank_weighting(score: Array, weights: Sequence[float] = (1.0, 0.75, 0.5, 0.25), *,
                   renorm: bool = True) -> Array:
    """Rank-weighted score (Eq. 11): per sample, SVD of the score as ``[C, h*w]``, singular
    values times ``weights``, reconstructed. ``renorm`` re-imposes each channel's mean and
    (unbiased) std of the original score (the official code, + 1e-5 on both stds).

    score ``[B, h, w, C]`` -> same shape. ``weights`` shorter than C drops the remaining ranks.
    """
    score = jax.lax.stop_gradient(score)
    b, h, w, c = score.shape
    m = jnp.swapaxes(score.reshape(b, h * w, c), 1, 2)  # [B, C, hw]
    u, s, vt = jnp.linalg.svd(m, full_matrices=False)
    k = min(len(weights), c)
    wv = jnp.zeros((c,), score.dtype).at[:k].set(jnp.asarray(weights[:k], score.dtype))
    approx = jnp.einsum("bik,bk,bkj->bij", u, s * wv, vt,
                        precision=jax.lax.Precision.HIGHEST)
    out = jnp.swapaxes(approx, 1, 2).reshape(b, h, w, c)
    if renorm:
        out = match_moments(score, out)
    return out


def match_moments(src: Array, tgt: Array, eps: float = 1e-5) -> Array:
    """``tgt`` with each sample's per-channel mean and std replaced by ``src``'s (unbiased std,
    ``eps`` added to both), the official ``instance_norm``. NHWC."""
    n = src.shape[1] * src.shape[2]

    def stats(x):
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        var = jnp.sum(jnp.square(x - mean), axis=(1, 2), keepdims=True) / (n - 1)
        return mean, jnp.sqrt(var) + eps

    ma, sa = stats(src)
    mb, sb = stats(tgt)
    return (tgt - mb) / sb * sa + ma


def postprocess_grad(grad: Array, mask: Array | None = None, *, div: float = 1000.0,
                     clamp: float = 1.0) -> Array:
    """Official post-processing: ``nan_to_num(clip(grad * mask / div, -clamp, clamp))``.

    ``mask`` ``[B, h, w, 1]`` (the frozen generator's accumulated opacity at latent size)."""
    if mask is not None:
        grad = grad * mask
    grad = jnp.clip(grad / div, -clamp, clamp)
    return jnp.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def injected_loss(latents: Array, grad: Array) -> Array:
    """``sum(stop_gradient(grad) * latents)``: its gradient w.r.t. ``latents`` is ``grad``
    exactly (the "SpecifyGradient" trick). Returns a scalar."""
    chex.assert_equal_shape([latents, grad])
    return jnp.sum(jax.lax.stop_gradient(grad) * latents)


def mirror_loss(latents: Array, latents_mirror: Array, grad: Array, *,
                base_weight: float = 0.75, mirror_weight: float = 0.25) -> Array:
    """Mirror gradients (Eq. 14): ``grad`` drives the render of pose pi, its width-flip drives
    the render of the yaw-mirrored pose pi'. latents ``[B, h, w, C]`` NHWC."""
    chex.assert_rank([latents, latents_mirror, grad], 4)
    chex.assert_equal_shape([latents, latents_mirror, grad])
    return (base_weight * injected_loss(latents, grad)
            + mirror_weight * injected_loss(latents_mirror, jnp.flip(grad, axis=2)))
