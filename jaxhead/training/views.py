"""The views of the distillation step: each says which renders it needs, which teacher rows
(noisy latents, timestep, control) it asks for, and how the teacher's answer becomes its loss.

The step (:mod:`jaxhead.training.step`) runs every enabled view's :meth:`View.render`, encodes
all their images with one VAE pass, asks each view for its :class:`TeacherRows`, makes one
teacher call over all rows and hands each view its slice in :meth:`View.loss`. A new kind of
view is one new class registered in :data:`VIEWS` (and a config section of the same name with
an ``enabled`` field).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxhead import camera, losses
from jaxhead.diffusion import add_noise, predict_x0
from jaxhead.models import vae as vae_lib
from jaxhead.ops import remat
from jaxhead.ops.resize import resize_bilinear
from jaxhead.teacher import TeacherOutput
from jaxhead.training.controls import CONTROLS, control_image
from jaxhead.training.prompts import view_direction
from jaxhead.training.sampling import sample_cameras, sample_step_index

Array = jax.Array
Params = dict[str, Any]
sg = jax.lax.stop_gradient


def maybe_remat(fn: Callable, on: bool, static: tuple[str, ...] = ()) -> Callable:
    """``fn`` rematerialised (:func:`jaxhead.ops.remat.remat`: recomputed in the backward
    pass; on CPU once the output's cotangent exists; keyword arguments in ``static`` treated
    as static) or ``fn``."""
    if not on:
        return fn

    def wrapped(*args, **kwargs):
        st = {k: kwargs.pop(k) for k in static if k in kwargs}
        return remat.remat(functools.partial(fn, **st))(*args, **kwargs)

    return wrapped


@dataclasses.dataclass(frozen=True, eq=False)
class StepContext:
    """What every view and term sees in one step: static modules and config, the frozen
    params, the trained generator's variables, this step's identities and PRNG streams."""

    models: Any  # jaxhead.training.models.Models
    config: Any  # validated FrozenConfigDict
    frozen: Params  # {"generator", "vae", "teacher", "text", "depth", "lpips"}
    params: Params  # trained generator variables (frozen copy with the trainable leaves)
    ws: Array  # [B, num_ws, w_dim]
    rep: Array  # trained generator's 3D representation [B, ...]
    rep_frozen: Array  # frozen generator's (no gradient)
    keys: Mapping[str, Array]
    perceptual_fn: Callable[[Array, Array], Array] | None = None
    # after the teacher call: per enabled view {"render", "latents", "rows", "out"} (for terms)
    views: Mapping[str, Mapping[str, Any]] | None = None
    term_outs: Mapping[str, Any] | None = None  # the teacher's answer to each term's rows

    @property
    def G(self):
        return self.models.G

    @property
    def batch(self) -> int:
        return self.ws.shape[0]

    def render_trained(self, ws: Array, c: Array, rep: Array, *, key: Array,
                       superresolution: bool = True) -> dict[str, Array]:
        """Trained-generator render (differentiated; rematerialised with ``config.remat``:
        its activations are recomputed in the backward pass instead of being held)."""
        fn = functools.partial(self.G.render, noise_mode=self.config.noise_mode,
                               background="none")
        fn = maybe_remat(fn, self.config.remat, static=("superresolution",))
        return fn(self.params, ws, c, rep, rng=key, superresolution=superresolution)

    def render_frozen(self, ws: Array, c: Array, rep: Array, *, key: Array,
                      superresolution: bool = True) -> dict[str, Array]:
        out = self.G.render(self.frozen["generator"], ws, c, rep, rng=key,
                            superresolution=superresolution,
                            noise_mode=self.config.noise_mode, background="none")
        return jax.tree.map(sg, out)

    def depth_fn(self) -> Callable[[Array, int], Array] | None:
        if self.models.depth is None:
            return None
        from jaxhead.models import depth_anything as da

        return functools.partial(da.depth_control, self.models.depth, self.frozen["depth"])

    # --- the diffusion side ---------------------------------------------------------------

    def noisy(self, latents: Array, step_idx: Array, key: Array) -> tuple[Array, Array]:
        """``(x_t, noise)`` at DDIM step index ``step_idx [b]`` (latents get no gradient)."""
        noise = jax.random.normal(key, latents.shape)
        ts = jnp.asarray(self.models.timesteps)
        return add_noise(jnp.asarray(self.models.alphas_cumprod), sg(latents), noise,
                         ts[step_idx]), noise

    def alpha_bar(self, step_idx: Array) -> Array:
        """``alphas_cumprod`` at the step index (``alpha_index="step"``, the official code) or
        at its timestep (``"timestep"``); an objective registered with its own
        ``alpha_index`` overrides the config's."""
        ac = jnp.asarray(self.models.alphas_cumprod)
        c = self.config
        index = losses.OBJECTIVES[c.objective].alpha_index or c.alpha_index
        if index == "step":
            return ac[step_idx]
        return ac[jnp.asarray(self.models.timesteps)[step_idx]]

    def t_range(self, view_cfg: Any) -> tuple[float, float]:
        """The timestep range a view draws from: the objective's (registered or
        ``objective_kw.t_range``) if it has one, else the view's own ``t_range``."""
        c = self.config
        tr = losses.objective_t_range(c.objective, c.objective_kw)
        return tuple(view_cfg.t_range) if tr is None else tr

    def objective(self, out: TeacherOutput, noise: Array, step_idx: Array,
                  rank_weights: tuple[float, ...] = (), rank_renorm: bool = True,
                  latents: Array | None = None) -> Array:
        """The configured objective's latent gradient (:mod:`jaxhead.losses.objectives`),
        with the rank weighting handed to it as its score transform when asked for (and the
        rows' timesteps, extra-prompt predictions, clean ``latents`` ``[b, h, w, 4]`` and the
        style bank's statistics ``frozen["style"]`` to objectives that take them)."""
        c = self.config
        obj = losses.OBJECTIVES[c.objective]
        kw = losses.objective_kwargs(c.objective, c.objective_kw, c.guidance_scale)
        if obj.takes("timestep"):
            kw["timestep"] = jnp.asarray(self.models.timesteps)[step_idx]
        if obj.takes("latents"):
            if latents is None:
                raise ValueError(f"objective {c.objective!r} needs the rows' clean latents")
            kw["latents"] = sg(latents)
        if obj.takes("style_stats"):
            if "style" not in self.frozen:
                raise ValueError(f"objective {c.objective!r} needs the style bank's statistics "
                                 "frozen['style'] (jaxhead.training.style_bank)")
            kw["style_stats"] = self.frozen["style"]
        if obj.takes("eps_prompts"):
            kw["eps_prompts"] = {k[4:]: v for k, v in getattr(out, "extra", {}).items()
                                 if k.startswith("obj:")}
        transform = None
        if rank_weights:
            transform = functools.partial(losses.rank_weighting, weights=rank_weights,
                                          renorm=rank_renorm)
        if transform is not None and obj.takes_score_transform:
            kw["score_transform"] = transform
            transform = None
        g = obj.fn(out.eps_uncond, out.eps_cond, noise=noise,
                   alpha_bar=self.alpha_bar(step_idx), **kw)
        return g if transform is None else transform(g)


class TeacherRows(NamedTuple):
    """A view's request to the teacher: ``x_t [b, h, w, 4]`` at DDIM step index ``step_idx
    [b]``, the injected ``noise``, and the control image ``[b, 8h, 8w, 3]`` (or None) for the
    ControlNet named ``controlnet`` (static). ``view_dir`` ``[b]`` (0 front, 1 side, 2 back)
    selects the view-suffixed prompt of each row (:mod:`jaxhead.training.prompts`); None:
    the plain prompt."""

    x_t: Array
    step_idx: Array
    noise: Array
    control: Array | None
    controlnet: str | None
    view_dir: Array | None = None


class Scores(NamedTuple):
    """The teacher's answer for a group of rows: :class:`TeacherOutput`'s three predictions
    (``eps_cond`` already blended with the neutral prompt's under ``config.blend``) and the
    conditional predictions of the extra prompt variants, ``extra["obj:<key>"]``."""

    eps_uncond: Array
    eps_cond: Array
    eps: Array
    extra: Mapping[str, Array]


class View(Protocol):
    """One kind of view of the distillation step."""

    name: str

    def render(self, ctx: StepContext) -> dict[str, Any]:
        """Renders for this step; ``"images"`` ``[n, H, W, 3]`` (in [-1, 1]) are VAE-encoded
        (with gradient) and come back as ``latents`` in :meth:`rows` and :meth:`loss`."""
        ...

    def rows(self, ctx: StepContext, r: dict[str, Any], latents: Array) -> TeacherRows: ...

    def loss(self, ctx: StepContext, r: dict[str, Any], latents: Array, rows: TeacherRows,
             out: TeacherOutput) -> tuple[dict[str, Array], dict[str, Array]]:
        """-> (loss terms by name, auxiliaries)."""
        ...

    def distill_loss(self, latents: Array, grad: Array) -> Array:
        """The distillation surrogate whose gradient w.r.t. ``latents`` is this view's
        (weighted) injected gradient ``grad``."""
        ...


@dataclasses.dataclass(frozen=True)
class SingleView:
    """Pose pi (yaw, pitch in the configured ranges) and its yaw mirror pi' after the SR; the
    score of pi with rank weighting drives pi (``base_weight``) and, width-flipped, pi'
    (``mirror_weight``); the Tweedie and LPIPS terms of x0_hat against the render of pi."""

    cfg: Any  # config.single

    name = "single"

    def render(self, ctx: StepContext) -> dict[str, Any]:
        s, B, k = self.cfg, ctx.batch, ctx.keys
        n = 2 if s.mirror else 1
        c = sample_cameras(k["pose"], (B,), s.yaw_range, s.pitch_range, ctx.G.camera_radius)
        cs = jnp.concatenate([c, camera.mirror_camera(c)][:n])
        tr = ctx.render_trained(jnp.concatenate([ctx.ws] * n), cs,
                                jnp.concatenate([ctx.rep] * n), key=k["render"])
        fr = ctx.render_frozen(ctx.ws, c, ctx.rep_frozen, key=k["render_f"])
        step_idx = sample_step_index(k["t_sv"], (B,), ctx.t_range(s),
                                     ctx.config.num_inference_steps, s.step_range)
        control = control_image(s.control, fr, fr["image"].shape[1], ctx.depth_fn())
        return {"images": tr["image"], "frozen": fr, "step_idx": step_idx, "control": control,
                "cameras": c}

    def rows(self, ctx: StepContext, r: dict[str, Any], latents: Array) -> TeacherRows:
        B = ctx.batch
        x_t, noise = ctx.noisy(latents[:B], r["step_idx"], ctx.keys["eps_sv"])
        view_dir = view_direction(r["cameras"]) if ctx.config.view_prompts else None
        return TeacherRows(x_t, r["step_idx"], noise, r["control"],
                           CONTROLS[self.cfg.control].controlnet, view_dir)

    def loss(self, ctx, r, latents, rows, out):
        s, c = self.cfg, ctx.config
        mask = None
        if c.grad_mask:
            mask = resize_bilinear(r["frozen"]["image_acc"], ctx.models.latent_size,
                                   antialias=True)
        g = ctx.objective(out, rows.noise, rows.step_idx, tuple(s.rank_weights), s.rank_renorm,
                          latents=latents[:ctx.batch])
        g = losses.postprocess_grad(g, mask, div=c.grad_div, clamp=c.grad_clamp)
        terms = {"ld_single": self.distill_loss(latents, g)}
        ts = jnp.asarray(ctx.models.timesteps)
        aux = {"g_single": g, "lat_single": sg(latents), "t_single": ts[rows.step_idx]}
        terms.update(self.x0_terms(ctx, r, rows, out))
        return terms, aux

    def distill_loss(self, latents: Array, grad: Array) -> Array:
        s = self.cfg
        B = grad.shape[0]
        if s.mirror:
            return losses.mirror_loss(latents[:B], latents[B:], grad,
                                      base_weight=s.base_weight, mirror_weight=s.mirror_weight)
        return s.base_weight * losses.injected_loss(latents[:B], grad)

    @staticmethod
    def x0_terms(ctx: StepContext, r: dict[str, Any], rows: TeacherRows,
                 out: TeacherOutput) -> dict[str, Array]:
        """Tweedie MSE and LPIPS of the decoded one-step estimate x0_hat (no gradient) against
        the trained render of pi (official weights 0.1 and 0.05)."""
        c, B = ctx.config, ctx.batch
        if not (c.tweedie_weight > 0 or c.lpips_weight > 0):
            return {}
        ts = jnp.asarray(ctx.models.timesteps)
        x0_lat = predict_x0(jnp.asarray(ctx.models.alphas_cumprod), rows.x_t, out.eps,
                            ts[rows.step_idx])
        x0 = vae_lib.decode_latents(ctx.models.vae, ctx.frozen["vae"], x0_lat)
        x0 = sg(jnp.clip(x0 * 0.5 + 0.5, 0.0, 1.0))  # [0, 1], no gradient (teacher side)
        # each term slices the render of pi itself: its cotangent then joins the VAE's in the
        # order the recorded reference trajectories were computed with (bitwise)
        terms = {}
        if c.tweedie_weight > 0:
            terms["tweedie"] = c.tweedie_weight * losses.tweedie_mse(x0, r["images"][:B])
        if c.lpips_weight > 0:
            fn = ctx.perceptual_fn
            if fn is None:
                if ctx.frozen.get("lpips") is None:
                    raise ValueError("lpips_weight > 0 needs LPIPS params (frozen['lpips']) "
                                     "or a perceptual_fn")
                from jaxhead.models import lpips as lpips_lib

                fn = functools.partial(lpips_lib.lpips, ctx.frozen["lpips"])
            terms["lpips"] = c.lpips_weight * jnp.mean(fn(2 * x0 - 1, r["images"][:B]))
        return terms


@dataclasses.dataclass(frozen=True)
class GridView:
    """Four poses per identity tiled into a 2x2 grid (before the SR: the 64 px raw renders
    upsampled; after: the SR renders halved), scored with the grid control; no rank weighting,
    no mirror."""

    cfg: Any  # config.grid

    name = "grid"

    def render(self, ctx: StepContext) -> dict[str, Any]:
        g, B, k = self.cfg, ctx.batch, ctx.keys
        cg = sample_cameras(k["grid_pose"], (B, 4), g.yaw_range, g.pitch_range,
                            ctx.G.camera_radius).reshape(-1, 25)
        rep4 = lambda x: jnp.repeat(x, 4, axis=0)  # noqa: E731
        before = g.mode == "before_sr"
        tr = ctx.render_trained(rep4(ctx.ws), cg, rep4(ctx.rep), key=k["render_grid"],
                                superresolution=not before)
        fr = ctx.render_frozen(rep4(ctx.ws), cg, rep4(ctx.rep_frozen), key=k["render_gf"],
                               superresolution=CONTROLS[g.control].needs_image)
        res = ctx.G.image_size // 2
        tiles = resize_bilinear(tr["image_raw"] if before else tr["image"], res,
                                align_corners=True)
        image = losses.make_grid(tiles.reshape((B, 4) + tiles.shape[1:]))
        ctl = control_image(g.control, fr, res, ctx.depth_fn())
        if ctl is not None:
            ctl = losses.make_grid(ctl.reshape((B, 4) + ctl.shape[1:]))
        half = ctx.models.latent_size // 2
        mask = losses.make_grid(resize_bilinear(fr["image_acc"], half, align_corners=True)
                                .reshape(B, 4, half, half, 1))
        step_idx = sample_step_index(k["t_grid"], (B,), ctx.t_range(g),
                                     ctx.config.num_inference_steps, g.step_range)
        return {"images": image, "control": ctl, "mask": mask, "step_idx": step_idx}

    def rows(self, ctx: StepContext, r: dict[str, Any], latents: Array) -> TeacherRows:
        x_t, noise = ctx.noisy(latents, r["step_idx"], ctx.keys["eps_grid"])
        return TeacherRows(x_t, r["step_idx"], noise, r["control"],
                           CONTROLS[self.cfg.control].controlnet)

    def loss(self, ctx, r, latents, rows, out):
        c = ctx.config
        g = ctx.objective(out, rows.noise, rows.step_idx, latents=latents)
        g = losses.postprocess_grad(g, r["mask"] if c.grad_mask else None, div=c.grad_div,
                                    clamp=c.grad_clamp)
        return {"ld_grid": self.distill_loss(latents, g)}, {"g_grid": g,
                                                             "lat_grid": sg(latents)}

    def distill_loss(self, latents: Array, grad: Array) -> Array:
        return self.cfg.weight * losses.injected_loss(latents, grad)


# view name (= its config section) -> constructor from that section; step order = this order
VIEWS: dict[str, Callable[[Any], View]] = {"single": SingleView, "grid": GridView}


def enabled_views(config) -> list[View]:
    """The views whose config section has ``enabled=True``, in registry order."""
    return [make(config[name]) for name, make in VIEWS.items() if config[name].enabled]
