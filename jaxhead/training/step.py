"""One pure, jitted training step: LD single-view + mirror scores, 2x2 grid score, Tweedie and
LDIS terms, Adam on the trainable generator parameters.

``train_step(state, frozen) -> (state, metrics)``: ``state`` holds only what changes (trainable
parameters, optimizer state, step, LDIS planes of the previous batch, root key); ``frozen``
holds the frozen generator copy, VAE, teacher, depth model and prompt embeddings. All
randomness is ``fold_in(state.rng, state.step)`` split into named streams.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxhead import camera, losses
from jaxhead.diffusion import add_noise, predict_x0
from jaxhead.models import lpips as lpips_lib
from jaxhead.models import vae as vae_lib
from jaxhead.ops.resize import resize_bilinear
from jaxhead.training.controls import renderer_depth_control, single_view_control
from jaxhead.training.models import CONTROLNET_FOR, Models
from jaxhead.utils import params_io

Array = jax.Array
Params = dict[str, Any]


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar
    params: Params  # trainable subtree (nested dict, paths as in the generator's variables)
    opt_state: optax.OptState
    prev_planes: Array  # [B, T, T, 96 * depth] trainable planes of the previous batch
    prev_planes_frozen: Array  # frozen generator's planes of the previous batch
    rng: Array  # root key data (uint32 [2]); step keys are fold_in(rng, step)


# --- parameter selection ------------------------------------------------------------------

def split_trainable(variables: Params, trainable: tuple[str, ...]) -> Params:
    """Nested subtree of ``variables`` whose "/"-joined paths match a ``trainable`` regex."""
    flat = params_io.flatten(variables)
    pats = [re.compile(p) for p in trainable]
    sel = {k: v for k, v in flat.items() if any(p.search(k) for p in pats)}
    if not sel:
        raise ValueError(f"no parameter matches optimizer.trainable={trainable}")
    return params_io.unflatten(sel)


def merge(variables: Params, trainable: Params) -> Params:
    """``variables`` with the leaves present in ``trainable`` replaced."""
    flat = params_io.flatten(variables)
    flat.update(params_io.flatten(trainable))
    return params_io.unflatten(flat)


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam (or SGD) on trainable leaves; leaves matching ``optimizer.frozen`` (biases) get
    no update."""
    o = config.optimizer
    frozen = [re.compile(p) for p in o.frozen]

    def labels(tree):
        flat = params_io.flatten(tree)
        lab = {k: ("freeze" if any(p.search(k) for p in frozen) else "train") for k in flat}
        return params_io.unflatten(lab)

    if o.name == "adam":
        opt = optax.adam(o.lr, b1=o.b1, b2=o.b2, eps=o.eps)
    elif o.name == "sgd":
        opt = optax.sgd(o.lr)
    else:
        raise ValueError(f"optimizer.name={o.name!r} (adam | sgd)")
    return optax.multi_transform({"train": opt, "freeze": optax.set_to_zero()}, labels)


# --- sampling helpers -------------------------------------------------------------------------

def sample_step_index(key: Array, shape: tuple[int, ...], t_range: tuple[float, float],
                      num_steps: int) -> Array:
    """DDIM step index ``floor(u * num_steps)``, ``u ~ U(t_range)`` (0 = noisiest step).

    The paper's t in (0.70, 0.96) of 50 steps is index 35..47; the official code's
    ``randint(35, 49)`` is ``t_range=(0.70, 1.0)``.
    """
    u = jax.random.uniform(key, shape, minval=t_range[0], maxval=t_range[1])
    return jnp.clip(jnp.floor(u * num_steps).astype(jnp.int32), 0, num_steps - 1)


def sample_cameras(key: Array, shape: tuple[int, ...], yaw_range, pitch_range,
                   radius: float) -> Array:
    ky, kp = jax.random.split(key)
    yaw = jax.random.uniform(ky, shape, minval=yaw_range[0], maxval=yaw_range[1])
    pitch = jax.random.uniform(kp, shape, minval=pitch_range[0], maxval=pitch_range[1])
    c = camera.make_camera(yaw.reshape(-1), pitch.reshape(-1), radius=radius)
    return c.reshape(shape + (25,))


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The static (hashable) settings of the step, read from the ml_collections config."""

    batch_size: int
    psi: float
    cutoff: int
    cond_yaw: float
    cond_pitch: float
    noise_mode: str
    objective: str
    ld_form: str
    guidance_scale: float
    controlnet_scale: float
    alpha_index: str
    grad_mask: bool
    grad_div: float
    grad_clamp: float
    num_inference_steps: int
    single: bool
    sv_yaw: tuple[float, float]
    sv_pitch: tuple[float, float]
    sv_t: tuple[float, float]
    rank_weights: tuple[float, ...]
    rank_renorm: bool
    mirror: bool
    base_weight: float
    mirror_weight: float
    grid: bool
    grid_mode: str
    grid_yaw: tuple[float, float]
    grid_pitch: tuple[float, float]
    grid_t: tuple[float, float]
    grid_weight: float
    tweedie_weight: float
    ldis_weight: float
    lpips_weight: float
    fixed_batch: bool = False
    remat: bool = False
    mesh_axis: str | None = None

    @classmethod
    def from_config(cls, c) -> StepConfig:
        t2 = lambda x: (float(x[0]), float(x[1]))  # noqa: E731
        return cls(
            batch_size=int(c.batch_size), psi=float(c.truncation_psi),
            cutoff=int(c.truncation_cutoff), cond_yaw=float(c.cond_yaw),
            cond_pitch=float(c.cond_pitch), noise_mode=c.noise_mode, objective=c.objective,
            ld_form=c.ld_form, guidance_scale=float(c.guidance_scale),
            controlnet_scale=float(c.controlnet_scale), alpha_index=c.alpha_index,
            grad_mask=bool(c.grad_mask), grad_div=float(c.grad_div),
            grad_clamp=float(c.grad_clamp), num_inference_steps=int(c.num_inference_steps),
            single=bool(c.single.enabled), sv_yaw=t2(c.single.yaw_range),
            sv_pitch=t2(c.single.pitch_range), sv_t=t2(c.single.t_range),
            rank_weights=tuple(float(w) for w in c.single.rank_weights),
            rank_renorm=bool(c.single.rank_renorm), mirror=bool(c.single.mirror),
            base_weight=float(c.single.base_weight), mirror_weight=float(c.single.mirror_weight),
            grid=bool(c.grid.enabled), grid_mode=c.grid.mode, grid_yaw=t2(c.grid.yaw_range),
            grid_pitch=t2(c.grid.pitch_range), grid_t=t2(c.grid.t_range),
            grid_weight=float(c.grid.weight), tweedie_weight=float(c.tweedie_weight),
            ldis_weight=float(c.ldis_weight), lpips_weight=float(c.lpips_weight),
            fixed_batch=bool(c.fixed_batch), remat=bool(c.remat), mesh_axis=c.mesh_axis)


def _objective(sc: StepConfig, eps_u: Array, eps_c: Array, noise: Array, abar: Array) -> Array:
    fn = losses.OBJECTIVES[sc.objective]
    kw: dict[str, Any] = dict(alpha_bar=abar, guidance_scale=sc.guidance_scale, noise=noise)
    if sc.objective in ("ld", "sds"):
        kw["form"] = sc.ld_form if sc.objective == "ld" else "official"
    return fn(eps_u, eps_c, **kw)


def conditioning_ws(models: Models, sc: StepConfig, g_params: Params, z: Array) -> Array:
    """z [B, 512] -> ws with the fixed conditioning camera and truncation."""
    G = models.G
    c_cond = camera.make_camera(jnp.full((z.shape[0],), sc.cond_yaw),
                                jnp.full((z.shape[0],), sc.cond_pitch),
                                radius=G.config.avg_camera_radius)
    return G.mapping(g_params, z, c_cond, sc.psi, sc.cutoff)


def _constrain(x: Array, sc: StepConfig, mesh) -> Array:
    """Split the leading (identity) axis over the mesh's data axis."""
    if mesh is None:
        return x
    from jax.sharding import NamedSharding, PartitionSpec

    spec = PartitionSpec(sc.mesh_axis, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _maybe_remat(fn: Callable, on: bool, static: tuple[str, ...] = ()) -> Callable:
    """``jax.checkpoint(fn)`` (keyword arguments in ``static`` treated as static) or ``fn``."""
    if not on:
        return fn

    def wrapped(*args, **kwargs):
        st = {k: kwargs.pop(k) for k in static if k in kwargs}
        return jax.checkpoint(lambda a, kw: fn(*a, **kw, **st))(args, kwargs)

    return wrapped


def loss_and_aux(trainable: Params, state: TrainState, frozen: Params, key: Array, *,
                 models: Models, sc: StepConfig, mesh=None,
                 perceptual_fn: Callable | None = None) -> tuple[Array, dict[str, Any]]:
    """The scalar surrogate whose gradient is the distillation update, and auxiliaries.

    The perceptual term (weight ``lpips_weight``, official 0.05) is LPIPS(alex) of the Tweedie
    estimate x0_hat against the single-view render, with the params ``frozen["lpips"]``;
    ``perceptual_fn(x0_hat, render) -> [B]`` (both ``[B, H, W, 3]`` in [-1, 1]) replaces it with
    another distance."""
    G = models.G
    B = sc.batch_size
    ks = dict(zip(["z", "pose", "grid_pose", "noise_g", "noise_f", "render", "render_f", "vae",
                   "t_sv", "t_grid", "eps_sv", "eps_grid", "render_gf"],
                  jax.random.split(key, 13), strict=True))
    fparams = frozen["generator"]
    params = merge(fparams, trainable)
    sg = jax.lax.stop_gradient
    z = _constrain(jax.random.normal(ks["z"], (B, G.config.z_dim)), sc, mesh)
    ws = sg(conditioning_ws(models, sc, fparams, z))
    radius = G.config.avg_camera_radius
    syn = functools.partial(G.synthesis, noise_mode=sc.noise_mode, background="none")
    # Trained-generator renders: with remat, their activations are recomputed in the backward
    # pass instead of being held alongside the VAE's (peak memory ~ the largest part).
    syn_t = _maybe_remat(syn, sc.remat, static=("superresolution",))
    depth_fn = None
    if models.depth is not None:
        from jaxhead.models import depth_anything as da

        def depth_fn(images, size):
            return da.depth_control(models.depth, frozen["depth"], images, size)
    lat_size = models.latent_size
    ts = jnp.asarray(models.timesteps)
    ac = jnp.asarray(models.alphas_cumprod)

    # Tri-grids: one backbone pass per identity and generator, shared by all poses this step.
    planes = G.planes(params, ws, noise_mode=sc.noise_mode, rng=ks["noise_g"])
    planes_f = sg(G.planes(fparams, ws, noise_mode=sc.noise_mode, rng=ks["noise_f"]))

    images, xs, tts, ctls, assign = [], [], [], [], []
    n_sv = 2 if sc.mirror else 1
    if sc.single:  # pose pi and its mirror pi' (after the SR)
        c = sample_cameras(ks["pose"], (B,), sc.sv_yaw, sc.sv_pitch, radius)
        cs = jnp.concatenate([c, camera.mirror_camera(c)][:n_sv])
        sv = syn_t(params, jnp.concatenate([ws] * n_sv), cs,
                 planes=jnp.concatenate([planes] * n_sv), rng=ks["render"])
        sv_f = jax.tree.map(sg, syn(fparams, ws, c, planes=planes_f, rng=ks["render_f"]))
        images.append(sv["image"])  # [n_sv * B, 512, 512, 3]
        idx_sv = sample_step_index(ks["t_sv"], (B,), sc.sv_t, sc.num_inference_steps)
        ctls.append(single_view_control(models.single_control, sv_f["image"],
                                        sv_f["image_depth"], depth_fn))
        assign += [CONTROLNET_FOR[models.single_control]] * B
    if sc.grid:  # 4 poses of each identity in a 2x2 grid
        cg = sample_cameras(ks["grid_pose"], (B, 4), sc.grid_yaw, sc.grid_pitch, radius)
        rep = lambda x: jnp.repeat(x, 4, axis=0)  # noqa: E731
        before = sc.grid_mode == "before_sr"
        gr = syn_t(params, rep(ws), cg.reshape(-1, 25), planes=rep(planes), rng=ks["render"],
                 superresolution=not before)
        gr_f = jax.tree.map(sg, syn(fparams, rep(ws), cg.reshape(-1, 25), planes=rep(planes_f),
                                    rng=ks["render_gf"],
                                    superresolution=models.grid_control == "depth_anything"))
        res = G.config.img_resolution // 2
        tiles = resize_bilinear(gr["image_raw"] if before else gr["image"], res,
                                align_corners=True)
        images.append(losses.make_grid(tiles.reshape((B, 4) + tiles.shape[1:])))
        if models.grid_control == "depth_anything":
            dctl = depth_fn(gr_f["image"], res)
        elif models.grid_control == "renderer_depth":
            dctl = renderer_depth_control(gr_f["image_depth"], res)
        else:
            dctl = None
        ctls.append(None if dctl is None else
                    losses.make_grid(dctl.reshape((B, 4) + dctl.shape[1:])))
        assign += [CONTROLNET_FOR[models.grid_control]] * B
        half = lat_size // 2
        grid_mask = losses.make_grid(resize_bilinear(gr_f["image_acc"], half, align_corners=True)
                                     .reshape(B, 4, half, half, 1))
        idx_g = sample_step_index(ks["t_grid"], (B,), sc.grid_t, sc.num_inference_steps)

    # The VAE encoder (differentiated w.r.t. the images): one pass over every image that
    # receives a distillation gradient, or one checkpointed pass per image group with remat.
    all_images = jnp.concatenate(images)
    encode = _maybe_remat(lambda p, x, k: vae_lib.encode_latents(models.vae, p, x, k), sc.remat)
    if sc.remat:
        kv = jax.random.split(ks["vae"], len(images))
        latents = jnp.concatenate([encode(frozen["vae"], im, k) for im, k in zip(images, kv,
                                                                                   strict=True)])
    else:
        latents = encode(frozen["vae"], all_images, ks["vae"])
    n_single = n_sv * B if sc.single else 0
    lat_sv, lat_grid = latents[:n_single], latents[n_single:]
    lshape = (B,) + latents.shape[1:]
    if sc.single:
        noise_sv = jax.random.normal(ks["eps_sv"], lshape)
        x_sv = add_noise(ac, sg(lat_sv[:B]), noise_sv, ts[idx_sv])
        xs.append(x_sv)
        tts.append(ts[idx_sv])
    if sc.grid:
        noise_g = jax.random.normal(ks["eps_grid"], lshape)
        xs.append(add_noise(ac, sg(lat_grid), noise_g, ts[idx_g]))
        tts.append(ts[idx_g])

    # One teacher call: single views (B) then grids (B), each with its ControlNet.
    control = None
    if any(a is not None for a in assign):
        control = jnp.concatenate([cc if cc is not None else
                                   jnp.zeros((B,) + all_images.shape[1:]) for cc in ctls])
    out = models.teacher.eps(frozen["teacher"], jnp.concatenate(xs), jnp.concatenate(tts),
                             frozen["text"]["cond"], frozen["text"]["neg"], control,
                             controlnet=tuple(assign), control_scale=sc.controlnet_scale,
                             guidance_scale=sc.guidance_scale)

    def abar(idx):
        return ac[idx] if sc.alpha_index == "step" else ac[ts[idx]]

    terms: dict[str, Array] = {}
    aux: dict[str, Any] = {}
    if sc.single:
        eu, ec = out.eps_uncond[:B], out.eps_cond[:B]
        mask = resize_bilinear(sv_f["image_acc"], lat_size, antialias=True) \
            if sc.grad_mask else None
        g = _objective(sc, eu, ec, noise_sv, abar(idx_sv))
        if sc.rank_weights:
            g = losses.rank_weighting(g, sc.rank_weights, renorm=sc.rank_renorm)
        g = losses.postprocess_grad(g, mask, div=sc.grad_div, clamp=sc.grad_clamp)
        if sc.mirror:
            terms["ld_single"] = losses.mirror_loss(lat_sv[:B], lat_sv[B:], g,
                                                    base_weight=sc.base_weight,
                                                    mirror_weight=sc.mirror_weight)
        else:
            terms["ld_single"] = sc.base_weight * losses.injected_loss(lat_sv[:B], g)
        aux.update(g_single=g, lat_single=sg(lat_sv), t_single=ts[idx_sv])
        if sc.lpips_weight > 0 and perceptual_fn is None:
            if frozen.get("lpips") is None:
                raise ValueError("lpips_weight > 0 needs LPIPS params (frozen['lpips']) or a "
                                 "perceptual_fn")
            perceptual_fn = functools.partial(lpips_lib.lpips, frozen["lpips"])
        if sc.tweedie_weight > 0 or sc.lpips_weight > 0:
            x0_lat = predict_x0(ac, x_sv, out.eps[:B], ts[idx_sv])
            x0 = vae_lib.decode_latents(models.vae, frozen["vae"], x0_lat)
            x0 = sg(jnp.clip(x0 * 0.5 + 0.5, 0.0, 1.0))  # [0, 1], no gradient (teacher side)
            if sc.tweedie_weight > 0:
                terms["tweedie"] = sc.tweedie_weight * losses.tweedie_mse(x0, sv["image"][:B])
            if sc.lpips_weight > 0:
                terms["lpips"] = sc.lpips_weight * jnp.mean(
                    perceptual_fn(2 * x0 - 1, sv["image"][:B]))
    if sc.grid:
        o = B if sc.single else 0
        g = _objective(sc, out.eps_uncond[o:], out.eps_cond[o:], noise_g, abar(idx_g))
        g = losses.postprocess_grad(g, grid_mask if sc.grad_mask else None, div=sc.grad_div,
                                    clamp=sc.grad_clamp)
        terms["ld_grid"] = sc.grid_weight * losses.injected_loss(lat_grid, g)
        aux.update(g_grid=g, lat_grid=sg(lat_grid))
    if sc.ldis_weight > 0:
        shp = planes.shape[:3] + (3, planes.shape[-1] // 3)
        terms["ldis"] = sc.ldis_weight * losses.ldis(
            sg(state.prev_planes).reshape(shp), planes.reshape(shp),
            state.prev_planes_frozen.reshape(shp), planes_f.reshape(shp))
    aux.update(terms=terms, planes=sg(planes), planes_frozen=planes_f)
    return sum(terms.values()), aux


def step_key(state: TrainState, sc: StepConfig) -> Array:
    """``fold_in(root, step)`` (``fold_in(root, 0)`` every step with ``fixed_batch``)."""
    root = jax.random.wrap_key_data(state.rng)
    return jax.random.fold_in(root, 0 if sc.fixed_batch else state.step)


def surrogate(aux: dict[str, Any], aux_ref: dict[str, Any], sc: StepConfig) -> Array:
    """Distillation surrogate of the latents in ``aux`` with the gradients of ``aux_ref`` held
    fixed: ``base <g, l> + mirror <flip g, l'> + grid <g_grid, l_grid>``. A training step on
    that batch should decrease it."""
    B = sc.batch_size
    total = jnp.zeros(())
    if "g_single" in aux_ref:
        g, lat = aux_ref["g_single"], aux["lat_single"]
        total += sc.base_weight * jnp.sum(g * lat[:B])
        if sc.mirror:
            total += sc.mirror_weight * jnp.sum(jnp.flip(g, axis=2) * lat[B:])
    if "g_grid" in aux_ref:
        total += sc.grid_weight * jnp.sum(aux_ref["g_grid"] * aux["lat_grid"])
    return total


def train_step(state: TrainState, frozen: Params, *, models: Models, sc: StepConfig,
               optimizer: optax.GradientTransformation, mesh=None,
               perceptual_fn: Callable | None = None) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step. Pure: same (state, frozen) -> same result."""
    key = step_key(state, sc)
    grad_fn = jax.grad(loss_and_aux, has_aux=True)
    grads, aux = grad_fn(state.params, state, frozen, key, models=models, sc=sc, mesh=mesh,
                         perceptual_fn=perceptual_fn)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(aux["terms"])
    for name in ("g_single", "g_grid"):
        if name in aux:
            metrics["rms_" + name] = jnp.sqrt(jnp.mean(jnp.square(aux[name])))
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["update_norm"] = optax.tree.norm(updates)
    if "t_single" in aux:
        metrics["t_single"] = jnp.mean(aux["t_single"].astype(jnp.float32))
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                        prev_planes=aux["planes"], prev_planes_frozen=aux["planes_frozen"])
    return new, metrics


def init_state(models: Models, frozen: Params, config, optimizer) -> TrainState:
    """Initial state: trainable subtree of the frozen generator, Adam state, and the LDIS
    planes of a first batch (the official code renders one batch before training)."""
    sc = StepConfig.from_config(config)
    root = jax.random.key(int(config.seed))
    trainable = split_trainable(frozen["generator"], tuple(config.optimizer.trainable))
    trainable = jax.tree.map(lambda x: jnp.array(x, copy=True), trainable)
    z0 = jax.random.normal(jax.random.fold_in(root, -1 & 0x7FFFFFFF), (sc.batch_size,
                                                                      models.G.config.z_dim))

    @jax.jit
    def first_planes(gp, z, key):
        ws = conditioning_ws(models, sc, gp, z)
        return models.G.planes(gp, ws, noise_mode=sc.noise_mode, rng=key)

    p0 = first_planes(frozen["generator"], z0, jax.random.fold_in(root, 0x7FFFFFFE))
    return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                      opt_state=optimizer.init(trainable), prev_planes=p0,
                      prev_planes_frozen=jnp.array(p0, copy=True),
                      rng=jax.random.key_data(root))
