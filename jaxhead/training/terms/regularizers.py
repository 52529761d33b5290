"""The objective zoo's regularising terms as step terms (added to any objective):

| ``config.terms.<name>`` | source | what it keeps |
|---|---|---|
| ``relative_distance`` | DiffusionGAN3D | pairwise tri-plane distances of the batch's identities |
| ``displacement_variance`` | StyleMM's CDL (adapted) | the same depth change for every head |
| ``nada`` | StyleGAN-NADA | CLIP image change along the source -> target text change |
| ``identity`` | (the paper's ID metric) | ArcFace embedding of the frozen render |
| ``sgf_directional`` | StyleGAN-Fusion | guided prediction of stylized vs frozen latents |
| ``sgf_reconstruction`` | StyleGAN-Fusion | one-step x0 of the stylized latents vs frozen ones |

Each is ``weight * value`` with ``weight`` 0 (off) by default; the pure losses live in
:mod:`jaxhead.losses.regularizers`. The image terms read the single view's renders
(``single.enabled`` is required); relative distance and displacement variance need
``batch_size >= 2``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxhead import losses
from jaxhead.diffusion import add_noise
from jaxhead.losses import regularizers as reg
from jaxhead.metrics.clip import image_embeds
from jaxhead.metrics.identity import face_embeddings  # (its landmarks are made at import)
from jaxhead.models import vae as vae_lib
from jaxhead.training.sampling import sample_cameras
from jaxhead.training.terms import Term, missing_dir

Array = jax.Array
sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class _Stateless(Term):
    min_batch = 1

    @classmethod
    def validate(cls, config) -> list[str]:
        errs = []
        if config.batch_size < cls.min_batch:
            errs.append(f"terms.{cls.name} needs batch_size >= {cls.min_batch} (it compares "
                        f"identities of one batch), got batch_size={config.batch_size}")
        if cls.needs_single and not config.single.enabled:
            errs.append(f"terms.{cls.name} reads the single view's renders: set "
                        "single.enabled=True")
        return errs

    def single(self, ctx) -> dict[str, Any]:
        return ctx.views["single"]


class RelativeDistance(_Stateless):
    """DiffusionGAN3D's relative distance loss between the identities of one batch, on the
    tri-planes (:func:`jaxhead.losses.regularizers.relative_distance`)."""

    name = "relative_distance"
    defaults = {"weight": 0.0}
    min_batch = 2

    def __call__(self, state, ctx) -> tuple[Array, None]:
        fp = ctx.G.feature_planes
        return self.weight * reg.relative_distance(fp(ctx.rep), fp(ctx.rep_frozen)), None


class DisplacementVariance(_Stateless):
    """Consistent-displacement variance: the batch is rendered (before the SR) by both
    generators from one camera drawn in the single-view ranges, and the variance across
    identities of the depth displacement inside the frozen heads (the product of their
    opacities) is penalised (:func:`jaxhead.losses.regularizers.displacement_variance`)."""

    name = "displacement_variance"
    defaults = {"weight": 0.0}
    min_batch = 2

    def __call__(self, state, ctx) -> tuple[Array, None]:
        s, B = ctx.config.single, ctx.batch
        k1, k2, k3 = jax.random.split(ctx.keys["terms"], 3)
        c = sample_cameras(k1, (1,), s.yaw_range, s.pitch_range, ctx.G.camera_radius)
        c = jnp.broadcast_to(c, (B, c.shape[-1]))
        tr = ctx.render_trained(ctx.ws, c, ctx.rep, key=k2, superresolution=False)
        fr = ctx.render_frozen(ctx.ws, c, ctx.rep_frozen, key=k3, superresolution=False)
        mask = jnp.prod(fr["image_acc"], axis=0)
        value = reg.displacement_variance(tr["image_depth"], fr["image_depth"], mask)
        return self.weight * value, None


class Identity(_Stateless):
    """Opt-in ArcFace identity loss ``mean(1 - cos(E(stylized), E(frozen)))`` of the single
    view's renders (camera-derived face crop, :mod:`jaxhead.metrics.identity`)."""

    name = "identity"
    defaults = {"weight": 0.0}
    needs_single = True

    @staticmethod
    def missing(config) -> list[str]:
        from jaxhead.models.arcface import CONVERT_HINT

        return missing_dir(config.models.arcface, "ArcFace for terms.identity", CONVERT_HINT,
                            "models.arcface", "terms.identity.weight")

    @staticmethod
    def load(config, demo: bool) -> Any:
        from jaxhead.models import arcface

        if demo:  # a small random iresnet (the embeddings mean nothing)
            return arcface.random_params(arcface.ArcFaceConfig(
                "iresnet", (1, 1, 1, 1), (8, 8, 16, 16), 8, 16), seed=int(config.seed) + 17)
        return arcface.load_arcface(config.models.arcface)

    def __call__(self, state, ctx) -> tuple[Array, None]:
        v, B = self.single(ctx), ctx.batch
        params = ctx.frozen["terms"][self.name]
        cams = v["render"]["cameras"]
        e = face_embeddings(params, 0.5 * (v["render"]["images"][:B] + 1), cameras=cams)
        e0 = face_embeddings(params, 0.5 * (v["render"]["frozen"]["image"] + 1), cameras=cams)
        return self.weight * jnp.mean(reg.identity_loss(e, e0)), None


class Nada(_Stateless):
    """StyleGAN-NADA's directional CLIP loss on the single view: the change between the
    frozen and the stylized render in CLIP image space along the change from ``source`` to
    ``target`` (empty: the run's prompt) in CLIP text space."""

    name = "nada"
    defaults = {"weight": 0.0, "source": "Photo", "target": ""}
    needs_single = True

    @staticmethod
    def missing(config) -> list[str]:
        from jaxhead.models.clip import CONVERT_HINT

        return missing_dir(config.models.clip, "CLIP for terms.nada", CONVERT_HINT,
                            "models.clip", "terms.nada.weight")

    @staticmethod
    def load(config, demo: bool) -> dict[str, Any]:
        from jaxhead.metrics import clip as clip_metrics

        n = config.terms.nada
        texts = [n.source, n.target or config.prompt]
        if demo:  # a tiny random CLIP and the demo's word-hash tokenizer
            from jaxhead.models import clip as clip_lib
            from jaxhead.models.clip_text import CLIPTextConfig
            from jaxhead.models.clip_vision import CLIPVisionConfig
            from jaxhead.training.demo_networks import DEMO_CLIP, DemoTokenizer

            cfg = clip_lib.CLIPConfig(
                text=CLIPTextConfig(**DEMO_CLIP),
                vision=CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        image_size=32, patch_size=8), projection_dim=16)
            params = clip_lib.random_params(cfg, jax.random.key(int(config.seed) + 19))
            tok = DemoTokenizer(cfg.text.vocab_size)
        else:
            params = clip_metrics.load_clip(config.models.clip)
            tok = clip_metrics.load_clip_tokenizer(config.models.clip)
        emb = clip_metrics.text_embeds(params, clip_metrics.tokenize(tok, texts))
        text_dir = reg.unit(reg.unit(emb[1]) - reg.unit(emb[0]))
        return {"clip": params, "text_dir": text_dir}

    def __call__(self, state, ctx) -> tuple[Array, None]:
        v, B = self.single(ctx), ctx.batch
        p = ctx.frozen["terms"][self.name]
        img = 0.5 * (v["render"]["images"][:B] + 1)
        img0 = 0.5 * (v["render"]["frozen"]["image"] + 1)
        e = image_embeds(p["clip"], jnp.clip(img, 0.0, 1.0))
        e0 = image_embeds(p["clip"], jnp.clip(img0, 0.0, 1.0))
        return self.weight * jnp.mean(reg.clip_direction_loss(e, e0, p["text_dir"])), None


class _SgfBase(_Stateless):
    needs_single = True

    def frozen_latents(self, ctx) -> Array:
        """The frozen single-view render's VAE latents (no gradient; the posterior mean, as
        StyleGAN-Fusion's ``encode_imgs``)."""
        fr = self.single(ctx)["render"]["frozen"]["image"]
        return sg(vae_lib.encode_latents(ctx.models.vae, ctx.frozen["vae"], fr))

    def alpha_bar(self, ctx, step_idx: Array) -> Array:
        ts = jnp.asarray(ctx.models.timesteps)[step_idx]
        return jnp.asarray(ctx.models.alphas_cumprod)[ts]

    def inject(self, ctx, g: Array) -> Array:
        """``weight * <clip(nan_to_num(g / div)), z_stylized>`` on the single view's latents."""
        cfg = self.config.terms[self.name]
        lat = self.single(ctx)["latents"][:ctx.batch]
        g = losses.postprocess_grad(g, None, div=cfg.div, clamp=cfg.clamp)
        return self.weight * losses.injected_loss(lat, g)


class SgfDirectional(_SgfBase):
    """StyleGAN-Fusion's diffusion directional regularizer: the frozen render's latents are
    noised with the single view's noise and timestep and sent to the teacher in the same
    call; ``(1 - abar)(eps_cfg(x_t) - eps_cfg(x_t^frozen))`` is injected (``/ div`` (100 for
    EG3D in the official code), clamped)."""

    name = "sgf_directional"
    defaults = {"weight": 0.0, "div": 100.0, "clamp": 1.0}

    def rows(self, ctx):
        from jaxhead.training.views import TeacherRows

        v = self.single(ctx)
        r = v["rows"]
        z0 = self.frozen_latents(ctx)
        ts = jnp.asarray(ctx.models.timesteps)
        x_t = add_noise(jnp.asarray(ctx.models.alphas_cumprod), z0, r.noise, ts[r.step_idx])
        return TeacherRows(x_t, r.step_idx, r.noise, r.control, r.controlnet, r.view_dir)

    def __call__(self, state, ctx) -> tuple[Array, None]:
        v = self.single(ctx)
        g = reg.sgf_directional_grad(v["out"].eps, ctx.term_outs[self.name].eps,
                                     self.alpha_bar(ctx, v["rows"].step_idx))
        return self.inject(ctx, g), None


class SgfReconstruction(_SgfBase):
    """StyleGAN-Fusion's reconstruction regularizer on the single view's teacher answer (its
    ``x_t``, noise and timestep; the official code draws a fresh noise for it)."""

    name = "sgf_reconstruction"
    defaults = {"weight": 0.0, "div": 100.0, "clamp": 1.0}

    def __call__(self, state, ctx) -> tuple[Array, None]:
        v = self.single(ctx)
        r = v["rows"]
        g = reg.sgf_reconstruction_grad(r.x_t, v["out"].eps, self.frozen_latents(ctx),
                                        self.alpha_bar(ctx, r.step_idx))
        return self.inject(ctx, g), None


__all__ = ["DisplacementVariance", "Identity", "Nada", "RelativeDistance", "SgfDirectional",
           "SgfReconstruction"]
