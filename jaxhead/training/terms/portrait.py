"""The single-portrait mode (3DArtmator, Zheng et al., TVCG 2024) as the step term
``terms.portrait``: stylize the generator from one art portrait ``I_ref`` instead of a prompt.

Before training, the portrait is inverted into the frozen generator (``w*``, the paper's
"anchor"; :mod:`jaxhead.training.reference`) and the guide direction is fixed,
``delta_guide = E(I_ref) - E(I*_ori)`` with ``I*_ori = G_ori(w*, theta_ref)`` the frozen render at
the reference camera (``t_mapping``-corrected as in the inversion). Each step then adds

    direction_weight * sum_{i=1..views} 1 - cos(delta_guide, delta_opt(theta_i))
  + spatial_weight * LPIPS(G_trn(w*, theta_ref), I_ref),
    delta_opt(theta) = E(G_trn(w, theta)) - E(G_ori(w, theta))

(Eq. 7-9; all weights 1 as in the paper), times ``weight``. ``E`` is the CLIP image embedding,
unit-normalised before the differences; ``theta_i`` are drawn in ``yaw_range`` /
``pitch_range`` each step (the paper: N = 1 random view per iteration); ``w`` is ``w*``
(``identities="anchor"``, the paper) or the step's sampled identities (``"sampled"``: the
direction is imposed on every head, as StyleGAN-NADA-like one-shot adaptation does). The
trained and frozen renders of a pair share their backbone noise and ray samples, so at
initialisation they are equal and ``delta_opt = 0``: see
:func:`jaxhead.losses.regularizers.image_direction_loss` for the value (1 per view) and the
finite gradient there. LPIPS is LPIPS-VGG16 (the inversion's network) on images area-averaged
to at most 256 px.

The inversion renders with PanoHead's projector near plane (``ray_start`` 2.35, as
``jaxhead.invert``); training renders use the generator's own (as every other render of the
trainer and the exported generator). The paper augments the renders before encoding them;
its augmentations are not specified and none are applied here. The score-distillation
objective is off in this mode (``objective="none"``, ``configs/portrait.py``): no Stable
Diffusion weights are read.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxhead.losses import regularizers as reg
from jaxhead.metrics.clip import image_embeds
from jaxhead.models.lpips_vgg import area_downsample, lpips_vgg
from jaxhead.training import reference
from jaxhead.training.sampling import sample_cameras
from jaxhead.training.terms import Term, missing_dir
from jaxhead.training.views import maybe_remat
from jaxhead.utils.compile import jit

Array = jax.Array
sg = jax.lax.stop_gradient

IDENTITIES = ("anchor", "sampled")
RENDER_OUTPUTS = ("image", "image_raw")
BACKGROUNDS = ("network", "none", "white")
DEMO_VGG_WIDTHS = (8, 16, 16, 32, 32)  # the demo's random LPIPS-VGG16
PERCEPTUAL_MAX = 256  # LPIPS input side, as the inversion's
_KEY_SALT = 0x504F5254  # "PORT": this term's stream, folded out of the step's "terms" key


def demo_lpips_vgg(seed: int) -> dict[str, Any]:
    """A small random LPIPS-VGG16 (``DEMO_VGG_WIDTHS``), drawn on the host (no compiles)."""
    from jaxhead.models.lpips_vgg import param_shapes
    from jaxhead.training.demo_networks import random_params

    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
                          param_shapes(DEMO_VGG_WIDTHS),
                          is_leaf=lambda x: isinstance(x, tuple))
    vgg = random_params(shapes, seed)
    vgg["lin"] = jax.tree.map(jnp.abs, vgg["lin"])  # LPIPS' lin weights are >= 0
    return vgg


def perceptual_size(size: int) -> int:
    return min(PERCEPTUAL_MAX, size)


def render_size(G: Any, render_output: str) -> int:
    """Side of the images the term compares (the SR output, or the neural rendering)."""
    return G.config.neural_rendering_resolution if render_output == "image_raw" \
        else G.image_size


def spatial_loss(lpips_params: Any, images: Array, ref: Array) -> Array:
    """``LPIPS-VGG16(images, ref)`` per image ``[N]`` (both ``[N, S, S, 3]`` in [-1, 1]),
    area-averaged to at most 256 px first (the inversion's perceptual input)."""
    s = perceptual_size(images.shape[1])
    return lpips_vgg(lpips_params, area_downsample(images, s), area_downsample(ref, s))


def guide_direction(clip_params: Any, ref_image: Array, frozen_render: Array) -> Array:
    """``delta_guide`` ``[D]``: ``unit(E(I_ref)) - unit(E(I*_ori))`` (images ``[1, S, S, 3]`` in
    [-1, 1])."""
    e = image_embeds(clip_params, jnp.clip(0.5 * (jnp.concatenate([ref_image, frozen_render])
                                                  + 1), 0.0, 1.0))
    return reg.unit(e[0]) - reg.unit(e[1])


@dataclasses.dataclass(frozen=True)
class Portrait(Term):
    """3DArtmator's style-directional difference + spatial alignment loss (module doc)."""

    name = "portrait"
    # the paper samples its views without giving a range: the trainer's single-view range
    defaults = {"weight": 0.0, "direction_weight": 1.0, "spatial_weight": 1.0, "views": 1,
                "yaw_range": (-math.pi / 3, math.pi / 3),
                "pitch_range": (-math.pi / 6, math.pi / 6),
                "identities": "anchor", "eps": 1e-3, "render_output": "image",
                "background": "network"}

    @property
    def cfg(self) -> Any:
        return self.config.terms.portrait

    # --- setup hooks ---------------------------------------------------------------------

    @staticmethod
    def validate(config) -> list[str]:
        p, errs = config.terms.portrait, []
        if not config.reference:
            errs.append("terms.portrait needs the art portrait: --config.reference=PATH (an "
                        "image with reference_yaw / reference_pitch, or a folder with "
                        "dataset.json; configs/portrait.py)")
        elif not Path(config.reference).exists():
            errs.append(f"reference={config.reference!r} does not exist")
        if config.reference_w and not Path(config.reference_w).is_file():
            errs.append(f"reference_w={config.reference_w!r} does not exist (an .npz with 'w' "
                        "[1, num_ws, w_dim], as jaxhead.invert writes)")
        for key, allowed in (("identities", IDENTITIES), ("render_output", RENDER_OUTPUTS),
                             ("background", BACKGROUNDS)):
            if p[key] not in allowed:
                errs.append(f"terms.portrait.{key}={p[key]!r} (choose from {allowed})")
        if int(p.views) < 1:
            errs.append(f"terms.portrait.views must be >= 1, got {p.views}")
        if not p.eps > 0:
            errs.append(f"terms.portrait.eps must be > 0, got {p.eps}")
        for key in ("direction_weight", "spatial_weight"):
            if not p[key] >= 0:
                errs.append(f"terms.portrait.{key} must be >= 0, got {p[key]}")
        for key in ("yaw_range", "pitch_range"):
            if not (len(p[key]) == 2 and p[key][0] <= p[key][1]):
                errs.append(f"terms.portrait.{key} must be (lo, hi) with lo <= hi, got "
                            f"{tuple(p[key])}")
        if int(config.reference_invert_steps) < 1:
            errs.append(f"reference_invert_steps must be >= 1, got "
                        f"{config.reference_invert_steps}")
        return errs

    @staticmethod
    def missing(config) -> list[str]:
        from jaxhead.models.clip import CONVERT_HINT as CLIP_HINT
        from jaxhead.models.lpips_vgg import CONVERT_HINT as VGG_HINT

        return (missing_dir(config.models.clip, "CLIP for terms.portrait", CLIP_HINT,
                             "models.clip", "terms.portrait.weight")
                + missing_dir(config.models.lpips_vgg, "LPIPS-VGG16 for terms.portrait "
                               "(inversion and spatial loss)", VGG_HINT, "models.lpips_vgg",
                               "terms.portrait.weight"))

    @staticmethod
    def load(config, demo: bool) -> dict[str, Any]:
        """``{"clip", "lpips"}``: CLIP (image tower used) and LPIPS-VGG16; small random ones
        on the demo models."""
        if demo:
            from jaxhead.models import clip as clip_lib
            from jaxhead.models.clip_text import CLIPTextConfig
            from jaxhead.models.clip_vision import CLIPVisionConfig
            from jaxhead.training.demo_networks import DEMO_CLIP, random_params  # host-drawn

            cfg = clip_lib.CLIPConfig(
                text=CLIPTextConfig(**DEMO_CLIP),
                vision=CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        image_size=32, patch_size=8), projection_dim=16)
            seed = int(config.seed)
            return {"clip": clip_lib.CLIPParams(cfg, random_params(
                        clip_lib.expected_shapes(cfg), seed + 23)),
                    "lpips": demo_lpips_vgg(seed + 29)}
        from jaxhead.metrics.clip import load_clip
        from jaxhead.models.lpips_vgg import load_lpips_vgg

        return {"clip": load_clip(config.models.clip),
                "lpips": load_lpips_vgg(config.models.lpips_vgg)}

    @staticmethod
    def check_inputs(config) -> None:
        """Read the reference (and ``reference_w``) once before anything is written: every
        problem is one :class:`jaxhead.errors.DataError` line."""
        reference.read_reference(config)
        if config.reference_w:
            reference.read_ws(config.reference_w)

    @staticmethod
    def prepare(models: Any, frozen: dict[str, Any], config, workdir: str | Path, *,
                write: bool = True) -> dict[str, Any]:
        """The reference's arrays for the step: ``w`` ``[1, num_ws, w_dim]`` (w*), ``ref``
        ``[1, S, S, 3]``, ``camera`` ``[1, 25]`` (corrected), ``guide`` ``[D]``."""
        G, gp = models.G, frozen["generator"]
        nets = frozen["terms"]["portrait"]
        p = config.terms.portrait
        ref = reference.read_reference(config)
        w = reference.reference_w(config, workdir, G, gp, nets["lpips"], ref, write=write)
        cam = reference.corrected_camera(G, gp, ref.camera)
        size = render_size(G, p.render_output)
        ref_img = jnp.asarray(reference.reference_image(ref, size))[None]

        @jit
        def guide(gp, clip_params, w, cam, ref_img):
            out = G.synthesis(gp, w, cam, noise_mode="const", deterministic=True,
                              background=p.background,
                              superresolution=p.render_output == "image")
            return guide_direction(clip_params, ref_img, out[p.render_output])

        g = guide(gp, nets["clip"], jnp.asarray(w), jnp.asarray(cam), ref_img)
        return {"w": np.asarray(w), "ref": np.asarray(ref_img), "camera": np.asarray(cam),
                "guide": np.asarray(g)}

    # --- the step ------------------------------------------------------------------------

    def render(self, ctx, params: Any, ws: Array, c: Array, rep: Array, key: Array, *,
               trained: bool) -> Array:
        p = self.cfg
        fn = functools.partial(ctx.G.render, noise_mode=ctx.config.noise_mode,
                               background=p.background,
                               superresolution=p.render_output == "image")
        if trained:  # activations recomputed in the backward pass with config.remat
            fn = maybe_remat(fn, ctx.config.remat)
        out = fn(params, ws, c, rep, rng=key)[p.render_output]
        return out if trained else sg(out)

    def __call__(self, state, ctx) -> tuple[dict[str, Array], None]:
        p, G = self.cfg, ctx.G
        data = ctx.frozen["terms"][self.name]
        fparams = ctx.frozen["generator"]
        k_rep, k_cam, k_view, k_ref = jax.random.split(
            jax.random.fold_in(ctx.keys["terms"], _KEY_SALT), 4)
        mode = ctx.config.noise_mode
        anchor = jnp.asarray(data["w"])
        rep_a = G.representation(ctx.params, anchor, noise_mode=mode, rng=k_rep)
        if p.identities == "anchor":
            ws, rep = anchor, rep_a
            rep_f = sg(G.representation(fparams, anchor, noise_mode=mode, rng=k_rep))
        else:  # the step's identities, their backbones again with one shared noise key
            ws = ctx.ws
            rep = G.representation(ctx.params, ws, noise_mode=mode, rng=k_rep)
            rep_f = sg(G.representation(fparams, ws, noise_mode=mode, rng=k_rep))
        n, v = ws.shape[0], int(p.views)
        cams = sample_cameras(k_cam, (n * v,), p.yaw_range, p.pitch_range, G.camera_radius)
        ws_v, rep_v, rep_fv = (jnp.repeat(x, v, axis=0) for x in (ws, rep, rep_f))
        tr = self.render(ctx, ctx.params, ws_v, cams, rep_v, k_view, trained=True)
        fr = self.render(ctx, fparams, ws_v, cams, rep_fv, k_view, trained=False)
        to01 = lambda x: jnp.clip(0.5 * (x + 1), 0.0, 1.0)  # noqa: E731
        clip_params = data["clip"]
        e = image_embeds(clip_params, to01(tr))
        e0 = image_embeds(clip_params, to01(fr))
        per = reg.image_direction_loss(e, e0, data["guide"], eps=p.eps).reshape(n, v)
        direction = jnp.mean(jnp.sum(per, axis=1))  # sum over views, mean over identities
        out = {"portrait_direction": self.weight * p.direction_weight * direction}
        if p.spatial_weight > 0:  # (weight 0: not rendered, not compiled)
            img = self.render(ctx, ctx.params, anchor, jnp.asarray(data["camera"]), rep_a,
                              k_ref, trained=True)
            spatial = jnp.mean(spatial_loss(data["lpips"], img, jnp.asarray(data["ref"])))
            out["portrait_spatial"] = self.weight * p.spatial_weight * spatial
        return out, None


__all__ = ["Portrait", "demo_lpips_vgg", "guide_direction", "spatial_loss"]
