"""PanoHead W+ projection and pivotal tuning (PTI), as PanoHead's ``projector_withseg.py``.

Pure, jit-able steps over explicit state; identities are the leading batch axis (every term is
per identity, so a batch of B identities follows B independent runs exactly)::

    proj = Projector(G, params, lpips_params, ProjectorConfig(num_steps=500))
    stats = proj.w_stats()                                   # w_avg, w_std, mean z (10k z)
    tgt = proj.targets(images, cameras, stats)               # [B, 512, 512, 3] in [-1, 1]
    state = proj.init(stats, batch=B)
    for i in range(500):
        state, terms = proj.step(state, tgt, stats, jax.random.fold_in(key, i))
    w = state.w_opt                                          # [B, num_ws, 512]

The official recipe (``project``): ``w_avg`` / ``w_std`` from 10,000 z (``RandomState(123)``)
mapped with a fixed frontal camera (``LookAtPoseSampler(3.14/2, 3.14/2)``, radius 2.7, focal
4.2647); the target camera is shifted by ``t_mapping(mean z, c)`` (added to ``c[:, 3, 7, 11]``);
``w_opt = w_avg`` in every layer; Adam(0.9, 0.999) with lr ``0.1 * ramp(t)``, ramp =
``(0.5 - 0.5 cos(pi min(1, (1 - t) / 0.25))) * min(1, t / 0.05)``, ``t = step / num_steps``;
each step renders ``w_opt + N(0, 1) * w_std * 0.05 * max(0, 1 - t / 0.75)^2`` with const
backbone noise and the generator's stochastic ray sampling; loss ``0.1 * mean((x - y)^2) +
LPIPS-VGG16(256 px area-downsampled) + 1.0 * mean((w_opt - w_avg)^2)``. The CLI renders with
``ray_start = 2.35`` as the official script does (``ProjectorConfig.ray_start``).

PTI (``project_pti``): every generator parameter trainable, Adam lr 3e-4 (no ramp), loss
``0.1 * MSE + LPIPS`` at the fixed projected ``w``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from jaxhead.camera import lookat_cam2world
from jaxhead.models.lpips_vgg import area_downsample, vgg16_lpips_features
from jaxhead.models.panohead import PanoHead
from jaxhead.utils.compile import jit

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """Hyper-parameters of ``project`` / ``project_pti`` (official defaults)."""

    num_steps: int = 500  # the official CLI's default (1000 in the function signature)
    w_avg_samples: int = 10_000
    w_avg_seed: int = 123
    initial_learning_rate: float = 0.1
    initial_noise_factor: float = 0.05
    lr_rampdown_length: float = 0.25
    lr_rampup_length: float = 0.05
    noise_ramp_length: float = 0.75
    mse_weight: float = 0.1
    w_norm_weight: float = 1.0
    perceptual_size: int = 256  # LPIPS input side (area downsampling)
    ray_start: float | None = 2.35  # projector_withseg.py sets it; None keeps the generator's
    deterministic: bool = False  # True: fixed mid-bin / linspace ray samples (tests)
    # "image" (the 512 px SR output, official) or "image_raw" (the neural rendering before
    # the SR: a fast stand-in for tests; set perceptual_size to its resolution)
    render_output: str = "image"
    background: str = "network"  # PanoHead's background network (official) or "none"
    pti_learning_rate: float = 3e-4


class Stats(NamedTuple):
    """``w_avg`` [w_dim], ``w_std`` (scalar), ``z_mean`` [z_dim] (for ``t_mapping``)."""

    w_avg: jax.Array
    w_std: jax.Array
    z_mean: jax.Array


class Targets(NamedTuple):
    """Per identity: ``images`` [B, H, W, 3] in [-1, 1], ``features`` [B, F] (LPIPS vectors of
    the targets), ``c`` [B, 25] (cameras after the t_mapping correction)."""

    images: jax.Array
    features: jax.Array
    c: jax.Array


class ProjState(NamedTuple):
    w_opt: jax.Array  # [B, num_ws, w_dim]
    adam: Any  # optax ScaleByAdamState
    step: jax.Array  # int32 scalar


class PTIState(NamedTuple):
    params: Params  # per-identity generator params ({"params": ...}, leading axis B)
    adam: Any
    step: jax.Array


def learning_rate(step: jax.Array, cfg: ProjectorConfig) -> jax.Array:
    """``initial_learning_rate * ramp(step / num_steps)`` (the official schedule)."""
    t = step / cfg.num_steps
    ramp = jnp.minimum(1.0, (1.0 - t) / cfg.lr_rampdown_length)
    ramp = 0.5 - 0.5 * jnp.cos(ramp * jnp.pi)
    return cfg.initial_learning_rate * ramp * jnp.minimum(1.0, t / cfg.lr_rampup_length)


def noise_scale(step: jax.Array, w_std: jax.Array, cfg: ProjectorConfig) -> jax.Array:
    """Std of the additive w-noise at ``step``: ``w_std * 0.05 * max(0, 1 - t / 0.75)^2``."""
    t = step / cfg.num_steps
    return w_std * cfg.initial_noise_factor * jnp.square(
        jnp.maximum(0.0, 1.0 - t / cfg.noise_ramp_length))


def stats_camera() -> jax.Array:
    """The official fixed camera for the w statistics: ``LookAtPoseSampler(3.14/2, 3.14/2)``
    at radius 2.7 around [0, 0, 0], focal 4.2647 (``[1, 25]``)."""
    c2w = lookat_cam2world(3.14 / 2, 3.14 / 2, jnp.zeros(3), 2.7)
    k = jnp.array([[4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1]], jnp.float32)
    return jnp.concatenate([c2w.reshape(1, 16), k], axis=1)


def _adam() -> optax.GradientTransformation:
    return optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)  # torch.optim.Adam's defaults


class Projector:
    """W+ projection and PTI of one PanoHead generator with an LPIPS-VGG16 (see module doc)."""

    def __init__(self, G: PanoHead, params: Params, lpips_params: Params,
                 cfg: ProjectorConfig = ProjectorConfig()) -> None:
        if cfg.render_output not in ("image", "image_raw"):
            raise ValueError(f"render_output must be 'image' or 'image_raw', got "
                             f"{cfg.render_output!r}")
        if cfg.ray_start is not None and cfg.ray_start != G.config.ray_start:
            G = PanoHead(dataclasses.replace(G.config, ray_start=cfg.ray_start))
        self.G, self.params, self.lpips_params, self.cfg = G, params, lpips_params, cfg
        # weights are arguments of the compiled steps (never baked in as constants)
        self._step_jit = jit(self._step, donate_argnums=2, static_argnames=("chunk", "mesh"))
        self._step_noise_jit = jit(self._step_with_noise)
        self._pti_jit = jit(self._pti_step, donate_argnums=2, static_argnames="mesh")

    def step(self, state: ProjState, tgt: Targets, stats: Stats, key: jax.Array,
             chunk: int | None = None, mesh: Mesh | None = None
             ) -> tuple[ProjState, dict[str, jax.Array]]:
        """One projection step (jitted; ``state`` is donated); ``key`` draws the w-noise and
        the ray samples. Returns the new state and the per-identity loss terms.

        ``chunk=None`` differentiates all identities at once (vmap: fastest where memory
        allows); ``chunk=k`` does ``k`` at a time in sequence (``lax.map``), which bounds the
        step's memory by ``k`` identities and gives the same result (each identity's draws come
        from its own keys). With a ``mesh`` (axis ``data``) the chunked identities are split
        over its devices first (``shard_map``); the batch per device must divide by ``k``."""
        return self._step_jit(self.params, self.lpips_params, state, tgt, stats, key,
                              chunk=chunk, mesh=mesh)

    def step_with_noise(self, state: ProjState, tgt: Targets, stats: Stats,
                        unit_noise: jax.Array, render_key: jax.Array
                        ) -> tuple[ProjState, dict[str, jax.Array]]:
        """:meth:`step` with given N(0, 1) w-noise ``[B, num_ws, w_dim]`` (parity tests)."""
        return self._step_noise_jit(self.params, self.lpips_params, state, tgt, stats,
                                    unit_noise, render_key)

    def pti_step(self, state: PTIState, tgt: Targets, w: jax.Array, key: jax.Array,
                 mesh: Mesh | None = None) -> tuple[PTIState, dict[str, jax.Array]]:
        """One PTI step for every identity (jitted; ``state`` is donated); with a ``mesh``
        (axis ``data``, dividing the batch) the identities are split over its devices."""
        return self._pti_jit(self.params, self.lpips_params, state, tgt, w, key, mesh=mesh)

    # --- setup -------------------------------------------------------------------------------

    def w_stats(self, chunk: int = 2500) -> Stats:
        """``w_avg``, ``w_std`` and the mean z over ``w_avg_samples`` official z draws."""
        cfg, G = self.cfg, self.G
        z = np.random.RandomState(cfg.w_avg_seed).randn(cfg.w_avg_samples, G.z_dim)
        mapping = jit(lambda p, zz, c: G.mapping(p, zz, c)[:, 0])
        c = stats_camera()
        ws = np.concatenate([np.asarray(mapping(self.params, jnp.asarray(z[i:i + chunk],
                                                                          jnp.float32),
                                                jnp.broadcast_to(c, (len(z[i:i + chunk]), 25))))
                             for i in range(0, len(z), chunk)])
        w_avg = ws.mean(0, keepdims=True)
        w_std = math.sqrt(float(np.sum(np.square(ws - w_avg))) / len(ws))
        return Stats(jnp.asarray(w_avg[0]), jnp.float32(w_std),
                     jnp.asarray(z.mean(0), jnp.float32))

    def corrected_cameras(self, c: jax.Array, stats: Stats) -> jax.Array:
        """Target cameras ``[B, 25]`` shifted by ``t_mapping(mean z, c)`` at ``c[:, 3, 7, 11]``.

        Raises ``MissingWeightsError`` for generators converted without ``t_mapping``."""
        z = jnp.broadcast_to(stats.z_mean, (c.shape[0], stats.z_mean.shape[0]))
        delta = self.G.camera_offset(self.params, z, c, 1.0)
        return c.at[:, jnp.array([3, 7, 11])].add(delta)

    def features(self, lpips_params: Params, images: jax.Array) -> jax.Array:
        """LPIPS vectors of images in [-1, 1]: area-downsampled to 256, fed in [0, 255]."""
        x = area_downsample((images + 1.0) * 127.5, self.cfg.perceptual_size)
        return vgg16_lpips_features(lpips_params, x)

    def targets(self, images: jax.Array, c: jax.Array, stats: Stats) -> Targets:
        """Targets from images ``[B, 512, 512, 3]`` in [-1, 1] and their cameras ``[B, 25]``."""
        feats = jit(self.features)(self.lpips_params, images)
        return Targets(images, feats, self.corrected_cameras(c, stats))

    def init(self, stats: Stats, batch: int) -> ProjState:
        w = jnp.broadcast_to(stats.w_avg, (batch, self.G.num_ws, stats.w_avg.shape[0]))
        w = jnp.array(w)
        return ProjState(w, _adam().init(w), jnp.zeros((), jnp.int32))

    # --- the projection step --------------------------------------------------------------

    def render(self, params: Params, ws: jax.Array, c: jax.Array, key: jax.Array) -> jax.Array:
        """Images ``[B, 512, 512, 3]`` (``render_output``) with const backbone noise."""
        raw = self.cfg.render_output == "image_raw"
        return self.G.synthesis(params, ws, c, noise_mode="const",
                                deterministic=self.cfg.deterministic, rng=key,
                                background=self.cfg.background,
                                superresolution=not raw)[self.cfg.render_output]

    def image_losses(self, images: jax.Array, tgt: Targets, lpips_params: Params | None = None
                     ) -> tuple[jax.Array, jax.Array]:
        """Per identity ``(mse [B], lpips [B])`` of rendered images against the targets."""
        lp = self.lpips_params if lpips_params is None else lpips_params
        mse = jnp.mean(jnp.square(tgt.images - images), axis=(1, 2, 3))
        perc = jnp.sum(jnp.square(tgt.features - self.features(lp, images)), -1)
        return mse, perc

    def loss(self, w_opt: jax.Array, tgt: Targets, stats: Stats, unit_noise: jax.Array,
             step: jax.Array, render_key: jax.Array, params: Params | None = None,
             lpips_params: Params | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Summed projection loss of ``w_opt`` [B, num_ws, w_dim] at ``step`` (with the given
        N(0, 1) w-noise) and the per-identity terms ``loss``, ``mse``, ``lpips``, ``w_norm``.
        ``render_key`` is split into one key per identity (:meth:`identity_loss`).
        ``params`` / ``lpips_params`` default to the projector's."""
        keys = jax.random.split(render_key, w_opt.shape[0])
        return self.identity_loss(w_opt, tgt, stats, unit_noise, step, keys, params,
                                  lpips_params)

    def identity_loss(self, w_opt: jax.Array, tgt: Targets, stats: Stats,
                      unit_noise: jax.Array, step: jax.Array, keys: jax.Array,
                      params: Params | None = None, lpips_params: Params | None = None
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """:meth:`loss` with one render key per identity (``keys`` [B]): identity ``i`` draws
        its ray samples from ``keys[i]`` alone, so any grouping of the identities into
        chunks renders every identity the same."""
        cfg = self.cfg
        params = self.params if params is None else params
        sigma = noise_scale(step, stats.w_std, cfg)
        img = jax.vmap(lambda w1, c1, k1: self.render(params, w1[None], c1[None], k1)[0])(
            w_opt + unit_noise * sigma, tgt.c, keys)
        mse, perc = self.image_losses(img, tgt, lpips_params)
        w_norm = jnp.mean(jnp.square(w_opt - stats.w_avg), axis=(1, 2))
        loss = cfg.mse_weight * mse + perc + cfg.w_norm_weight * w_norm
        return jnp.sum(loss), {"loss": loss, "mse": mse, "lpips": perc, "w_norm": w_norm}

    def _step_with_noise(self, params: Params, lpips_params: Params, state: ProjState,
                         tgt: Targets, stats: Stats, unit_noise: jax.Array,
                         render_key: jax.Array, chunk: int | None = None,
                         mesh: Mesh | None = None) -> tuple[ProjState, dict[str, jax.Array]]:
        keys = jax.random.split(render_key, state.w_opt.shape[0])
        args = (state.w_opt, tgt.images, tgt.features, tgt.c, unit_noise, keys)
        if chunk is None:
            g, terms = self._gradients(params, lpips_params, stats, state.step, *args)
        elif mesh is None:
            g, terms = self._chunked_gradients(params, lpips_params, stats, state.step, *args,
                                               chunk=chunk)
        else:
            data, rep = PartitionSpec("data"), PartitionSpec()
            g, terms = jax.shard_map(
                lambda *a: self._chunked_gradients(*a, chunk=chunk), mesh=mesh,
                in_specs=(rep,) * 4 + (data,) * len(args), out_specs=data,
                check_vma=False)(params, lpips_params, stats, state.step, *args)
        terms["lr"] = learning_rate(state.step, self.cfg)
        return self.apply_gradient(state, g), terms

    def _gradients(self, params: Params, lpips_params: Params, stats: Stats, step: jax.Array,
                   w: jax.Array, images: jax.Array, features: jax.Array, c: jax.Array,
                   unit_noise: jax.Array, keys: jax.Array
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """d (summed loss) / d w ``[B, num_ws, w_dim]`` and the per-identity terms."""
        (_, terms), g = jax.value_and_grad(self.identity_loss, has_aux=True)(
            w, Targets(images, features, c), stats, unit_noise, step, keys, params,
            lpips_params)
        return g, terms

    def _chunked_gradients(self, params: Params, lpips_params: Params, stats: Stats,
                           step: jax.Array, *per_identity: jax.Array, chunk: int
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """:meth:`_gradients` ``chunk`` identities at a time, in sequence. Exact: the loss is
        a sum over identities and each w enters only its own term, so the gradient of the
        sum restricted to a chunk is the gradient of that chunk's sum."""
        b = per_identity[0].shape[0]
        if b % chunk:
            raise ValueError(f"chunk {chunk} does not divide the {b} identities "
                             "(per device, with a mesh)")
        split = [x.reshape((b // chunk, chunk) + x.shape[1:]) for x in per_identity]
        g, terms = jax.lax.map(
            lambda a: self._gradients(params, lpips_params, stats, step, *a), split)
        return jax.tree.map(lambda x: x.reshape((b,) + x.shape[2:]), (g, terms))

    def apply_gradient(self, state: ProjState, g: jax.Array) -> ProjState:
        """The Adam update of ``w_opt`` with gradient ``g`` at ``state.step``'s lr."""
        direction, adam = _adam().update(g, state.adam)
        lr = learning_rate(state.step, self.cfg)
        return ProjState(state.w_opt - lr * direction, adam, state.step + 1)

    def _step(self, params: Params, lpips_params: Params, state: ProjState, tgt: Targets,
              stats: Stats, key: jax.Array, chunk: int | None = None,
              mesh: Mesh | None = None) -> tuple[ProjState, dict[str, jax.Array]]:
        k_noise, k_render = jax.random.split(key)
        noise = jax.random.normal(k_noise, state.w_opt.shape, state.w_opt.dtype)
        return self._step_with_noise(params, lpips_params, state, tgt, stats, noise, k_render,
                                     chunk, mesh)

    # --- pivotal tuning -------------------------------------------------------------------

    def pti_init(self, batch: int) -> PTIState:
        """One copy of the generator's trainable params per identity (buffers stay shared)."""
        p = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape).copy(),
                         self.params["params"])
        return PTIState(p, jax.vmap(_adam().init)(p), jnp.zeros((), jnp.int32))

    def _pti_step(self, base: Params, lpips_params: Params, state: PTIState, tgt: Targets,
                  w: jax.Array, key: jax.Array, mesh: Mesh | None = None
                  ) -> tuple[PTIState, dict[str, jax.Array]]:
        """One PTI Adam step per identity. The identities' generators are tuned one after the
        other (``lax.map``), not vmapped: under vmap every convolution gets a per-identity
        kernel, which XLA:CPU runs as grouped convolutions (17 GB and 2x the time for the tiny
        fixture at batch 2). With a ``mesh`` (axis ``data``) the identities are split over its
        devices (``shard_map``), each device tuning its own in sequence."""
        keys = jax.random.split(key, w.shape[0])
        args = (state.params, state.adam, tgt.images, tgt.features, tgt.c, w, keys)
        if mesh is None:
            p, adam, terms = self._pti_identities(base, lpips_params, *args)
        else:
            data, rep = PartitionSpec("data"), PartitionSpec()
            p, adam, terms = jax.shard_map(
                self._pti_identities, mesh=mesh, in_specs=(rep, rep) + (data,) * len(args),
                out_specs=data, check_vma=False)(base, lpips_params, *args)
        return PTIState(p, adam, state.step + 1), terms

    def _pti_identities(self, base: Params, lpips_params: Params, params: Params, adam,
                        images: jax.Array, features: jax.Array, c: jax.Array, w: jax.Array,
                        keys: jax.Array) -> tuple[Params, Any, dict[str, jax.Array]]:
        """The PTI step of each identity on the leading axis of every argument after the
        first two, in sequence: ``(params, adam state, per-identity terms)``."""
        cfg = self.cfg

        def one(a):
            p, opt, img_t, feat_t, c1, w1, k = a

            def loss_fn(pp):
                img = self.render({**base, "params": pp}, w1[None], c1[None], k)
                mse, perc = self.image_losses(img, Targets(img_t[None], feat_t[None], c1[None]),
                                              lpips_params)
                return cfg.mse_weight * mse[0] + perc[0], (mse[0], perc[0])

            (loss, (mse, perc)), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
            direction, opt = _adam().update(g, opt)
            p = jax.tree.map(lambda x, d: x - cfg.pti_learning_rate * d, p, direction)
            return p, opt, {"loss": loss, "mse": mse, "lpips": perc}

        return jax.lax.map(one, (params, adam, images, features, c, w, keys))

    def tuned_params(self, state: PTIState, i: int) -> Params:
        """Identity ``i``'s tuned generator as a full variables dict (``load_panohead``'s)."""
        return {**self.params, "params": jax.tree.map(lambda x: x[i], state.params)}


__all__ = ["PTIState", "ProjState", "Projector", "ProjectorConfig", "Stats", "Targets",
           "learning_rate", "noise_scale", "stats_camera"]
