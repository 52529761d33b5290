"""One pure, jitted training step: the enabled views' distillation scores (one teacher call),
their extra terms, the stateful terms (LDIS), and the optimizer update.

``train_step(state, frozen) -> (state, metrics)``: ``state`` holds only what changes (trainable
parameters, optimizer state, step, the terms' states, root key); ``frozen`` holds the frozen
generator copy, VAE, teacher, depth model and prompt embeddings. All randomness is
``fold_in(state.rng, state.step)`` split into named streams.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxhead import losses
from jaxhead.models import vae as vae_lib
from jaxhead.training import prompts
from jaxhead.training.optim import merge, split_trainable
from jaxhead.training.sampling import conditioning_ws
from jaxhead.training.sharding import constrain_batch
from jaxhead.training.terms import enabled_terms
from jaxhead.training.views import (
    Scores,
    StepContext,
    TeacherRows,
    enabled_views,
    maybe_remat,
)

Array = jax.Array
Params = dict[str, Any]
sg = jax.lax.stop_gradient

# The step's named PRNG streams. split() is prefix-stable, so a stream appended here leaves
# every earlier stream (and so every recorded trajectory) unchanged.
KEY_NAMES = ("z", "pose", "grid_pose", "noise_g", "noise_f", "render", "render_f", "vae",
             "t_sv", "t_grid", "eps_sv", "eps_grid", "render_gf", "render_grid", "terms")


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar
    params: Params  # trainable subtree (nested dict, paths as in the generator's variables)
    opt_state: optax.OptState
    term_state: dict[str, Any]  # state of each stateful term (jaxhead.training.terms)
    rng: Array  # root key data (uint32 [2]); step keys are fold_in(rng, step)


def step_keys(state: TrainState, config) -> dict[str, Array]:
    """Named streams of ``fold_in(root, step)`` (``fold_in(root, 0)`` with ``fixed_batch``)."""
    root = jax.random.wrap_key_data(state.rng)
    key = jax.random.fold_in(root, 0 if config.fixed_batch else state.step)
    return dict(zip(KEY_NAMES, jax.random.split(key, len(KEY_NAMES)), strict=True))


def _encode(ctx: StepContext, images: list[Array], which: list[int] | None = None
            ) -> list[Array]:
    """VAE latents of each view's images (with gradient): one pass over all of them, or one
    checkpointed pass per view with ``remat``. ``which``: the views' indices among all enabled
    views (a part of the step, see :func:`train_step`); each view keeps its own VAE key."""
    models, key = ctx.models, ctx.keys["vae"]
    # with remat, one image at a time too (a 512 px image's encoder backward is ~2.5 GiB)
    encode = maybe_remat(lambda p, x, k: vae_lib.encode_latents(
        models.vae, p, x, k, one_at_a_time=bool(ctx.config.remat)), ctx.config.remat)
    if ctx.config.remat or which is not None:
        ks = jax.random.split(key, len(enabled_views(ctx.config)))
        which = range(len(images)) if which is None else which
        return [encode(ctx.frozen["vae"], im, ks[i]) for im, i in zip(images, which,
                                                                     strict=True)]
    latents = encode(ctx.frozen["vae"], jnp.concatenate(images), key)
    return jnp.split(latents, np.cumsum([len(im) for im in images])[:-1])


def _teacher(ctx: StepContext, rows: list[TeacherRows]):
    """One teacher call over every group of rows; returns each group's slice of the output.

    With extra prompt variants (``config.blend``, an objective's ``prompts``) or
    view-dependent prompts, every row is asked once per variant in the same call (per-row
    text embeddings) and each group gets :class:`Scores`; otherwise :class:`TeacherOutput`
    as the plain CFG query."""
    c = ctx.config
    variants = prompts.variants(c)
    if variants or any(r.view_dir is not None for r in rows):
        return _teacher_variants(ctx, rows, variants)
    control = None
    if any(r.controlnet is not None for r in rows):
        size = next(r.control.shape[1:] for r in rows if r.control is not None)
        control = jnp.concatenate([r.control if r.control is not None else
                                   jnp.zeros((len(r.x_t),) + size) for r in rows])
    assign = tuple(r.controlnet for r in rows for _ in range(len(r.x_t)))
    ts = jnp.asarray(ctx.models.timesteps)
    out = ctx.models.teacher.eps(
        ctx.frozen["teacher"], jnp.concatenate([r.x_t for r in rows]),
        jnp.concatenate([ts[r.step_idx] for r in rows]), ctx.frozen["text"]["cond"],
        ctx.frozen["text"]["neg"], control, controlnet=assign,
        control_scale=c.controlnet_scale, guidance_scale=c.guidance_scale)
    cuts = np.cumsum([len(r.x_t) for r in rows])[:-1]
    return [type(out)(*parts) for parts in zip(*(jnp.split(x, cuts) for x in out),
                                               strict=True)]


def _teacher_variants(ctx: StepContext, rows: list[TeacherRows], variants: list[str]
                      ) -> list[Scores]:
    """The teacher call with per-row prompts: the rows once per prompt variant (style prompt
    first), one UNet batch; the neutral prompt blended into ``eps_cond`` (IESD)."""
    c, text = ctx.config, ctx.frozen["text"]
    names = ["cond"] + variants
    n = sum(len(r.x_t) for r in rows)
    control = None
    if any(r.controlnet is not None for r in rows):
        size = next(r.control.shape[1:] for r in rows if r.control is not None)
        control = jnp.concatenate([r.control if r.control is not None else
                                   jnp.zeros((len(r.x_t),) + size) for r in rows])
        control = jnp.concatenate([control] * len(names))
    assign = tuple(r.controlnet for r in rows for _ in range(len(r.x_t))) * len(names)
    ts = jnp.asarray(ctx.models.timesteps)
    x = jnp.concatenate([r.x_t for r in rows])
    t = jnp.concatenate([ts[r.step_idx] for r in rows])
    cond = jnp.concatenate([prompts.row_text(text, v, r.view_dir, len(r.x_t))
                            for v in names for r in rows])
    out = ctx.models.teacher.eps(
        ctx.frozen["teacher"], jnp.concatenate([x] * len(names)),
        jnp.concatenate([t] * len(names)), cond, text["neg"], control, controlnet=assign,
        control_scale=c.controlnet_scale, guidance_scale=c.guidance_scale)
    eps_u = out.eps_uncond[:n]
    conds = {v: out.eps_cond[i * n:(i + 1) * n] for i, v in enumerate(names)}
    eps_c = conds["cond"]
    if "blend" in conds:
        eps_c = losses.blend_eps(eps_c, conds["blend"], c.blend.weight)
    eps = losses.cfg_eps(eps_u, eps_c, c.guidance_scale)
    extra = {v: conds[v] for v in variants if v.startswith("obj:")}
    cuts = np.cumsum([len(r.x_t) for r in rows])[:-1]
    split = lambda a: jnp.split(a, cuts)  # noqa: E731
    parts_extra = {k: split(v) for k, v in extra.items()}
    return [Scores(u, cc, e, {k: parts_extra[k][i] for k in extra})
            for i, (u, cc, e) in enumerate(zip(split(eps_u), split(eps_c), split(eps),
                                               strict=True))]


def loss_and_aux(trainable: Params, state: TrainState, frozen: Params, keys: Mapping[str, Array],
                 *, models: Any, config: Any, mesh=None,
                 perceptual_fn: Callable | None = None,
                 part: tuple[tuple[int, ...], tuple[str, ...]] | None = None
                 ) -> tuple[Array, dict[str, Any]]:
    """The scalar surrogate whose gradient is the distillation update, and auxiliaries
    (``terms``: each loss term; per view its injected gradient and latents; ``term_state``).

    ``perceptual_fn(x0_hat, render) -> [B]`` (both ``[B, H, W, 3]`` in [-1, 1]) replaces
    LPIPS(alex) in the term weighted by ``lpips_weight``. ``part = (view indices, term names)``
    restricts it to those views and terms: the parts' gradients add up to the whole step's
    (see ``split_backward`` in :func:`train_step`)."""
    G, c = models.G, config
    fparams = frozen["generator"]
    params = merge(fparams, trainable)
    z = constrain_batch(jax.random.normal(keys["z"], (c.batch_size, G.z_dim)), mesh,
                        c.mesh_axis)
    ws = sg(conditioning_ws(G, c, fparams, z))
    # one 3D representation per identity and generator, shared by every view this step
    rep = G.representation(params, ws, noise_mode=c.noise_mode, rng=keys["noise_g"])
    rep_f = sg(G.representation(fparams, ws, noise_mode=c.noise_mode, rng=keys["noise_f"]))
    ctx = StepContext(models, c, frozen, params, ws, rep, rep_f, keys, perceptual_fn)

    views = enabled_views(c)
    which, term_names = (list(range(len(views))), None) if part is None else part
    views = [views[i] for i in which]
    renders = [v.render(ctx) for v in views]
    latents = (_encode(ctx, [r["images"] for r in renders], None if part is None else which)
               if views else [])  # objective "none": no view, no VAE
    rows = [v.rows(ctx, r, lat) for v, r, lat in zip(views, renders, latents, strict=True)]
    ctx = dataclasses.replace(ctx, views={
        v.name: {"render": r, "latents": lat, "rows": row}
        for v, r, lat, row in zip(views, renders, latents, rows, strict=True)})
    active = [t for t in enabled_terms(c) if term_names is None or t.name in term_names]
    # terms that ask the teacher too (StyleGAN-Fusion's regularizers) join the one call
    term_rows = {t.name: t.rows(ctx) for t in active}
    term_rows = {k: r for k, r in term_rows.items() if r is not None}
    outs = _teacher(ctx, rows + list(term_rows.values())) if rows or term_rows else []
    outs, term_outs = outs[:len(rows)], dict(zip(term_rows, outs[len(rows):], strict=True))
    ctx = dataclasses.replace(ctx, views={
        v.name: {**ctx.views[v.name], "out": out} for v, out in zip(views, outs, strict=True)},
        term_outs=term_outs)
    terms: dict[str, Array] = {}
    aux: dict[str, Any] = {}
    for v, r, lat, row, out in zip(views, renders, latents, rows, outs, strict=True):
        t, a = v.loss(ctx, r, lat, row, out)
        terms.update(t)
        aux.update(a)
    term_state = {}
    for term in active:
        value, new = term(state.term_state.get(term.name), ctx)
        if isinstance(value, Mapping):  # a term of several named parts (each logged)
            terms.update(value)
        else:
            terms[term.name] = value
        if term.stateful:
            term_state[term.name] = new
    aux.update(terms=terms, term_state=term_state)
    return sum(terms.values()), aux


def all_finite(tree: Any) -> Array:
    """Scalar bool: every value of every (float) leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def backward_parts(config) -> list[tuple[tuple[int, ...], tuple[str, ...]]]:
    """The parts of ``split_backward``: one per enabled view, ``((view index,), term names)``;
    a term that reads the single view's renders (``needs_single``) goes with that view, every
    other term with the last view."""
    names = [v.name for v in enabled_views(config)]
    terms = enabled_terms(config)

    def home(t) -> int:
        if t.needs_single and "single" in names:
            return names.index("single")
        return len(names) - 1

    return [((i,), tuple(t.name for t in terms if home(t) == i)) for i in range(len(names))]


def train_step(state: TrainState, frozen: Params, *, models: Any, config: Any,
               optimizer: optax.GradientTransformation, mesh=None,
               perceptual_fn: Callable | None = None) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step. Pure: same (state, frozen) -> same result.

    A step whose gradient, update or new term state is not finite is skipped: parameters,
    optimizer and term states stay as they were (the step counter and so the PRNG stream move
    on) and the metric ``skipped`` is 1."""
    keys = step_keys(state, config)
    grad_fn = functools.partial(jax.grad(loss_and_aux, has_aux=True), models=models,
                                config=config, mesh=mesh, perceptual_fn=perceptual_fn)
    parts = backward_parts(config)
    if not config.split_backward or len(parts) < 2:
        grads, aux = grad_fn(state.params, state=state, frozen=frozen, keys=keys)
    else:  # one backward pass per view, in sequence: only one view's activations are live
        grads, aux, trainable = None, {"terms": {}, "term_state": {}}, state.params
        inputs = (state, frozen, {k: jax.random.key_data(v) for k, v in keys.items()})
        for part in parts:
            st, fz, kd = inputs
            if grads is not None:
                # Everything the next view computes, even from frozen weights and keys alone
                # (frozen renders, noise), starts once this sum exists: otherwise XLA may
                # schedule it early and keep it live through the previous view's backward.
                trainable, grads, st, fz, kd = jax.lax.optimization_barrier(
                    (trainable, grads, st, fz, kd))
            g, a = grad_fn(trainable, state=st, frozen=fz,
                           keys={k: jax.random.wrap_key_data(v) for k, v in kd.items()},
                           part=part)
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
            aux = {**aux, **a, "terms": {**aux["terms"], **a["terms"]},
                   "term_state": {**aux["term_state"], **a["term_state"]}}
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = all_finite(grads) & all_finite(updates) & all_finite(aux["term_state"])
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
    metrics = dict(aux["terms"])
    for name in ("g_single", "g_grid"):
        if name in aux:
            metrics["rms_" + name] = jnp.sqrt(jnp.mean(jnp.square(aux[name])))
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["update_norm"] = optax.tree.norm(updates)
    if "t_single" in aux:
        metrics["t_single"] = jnp.mean(aux["t_single"].astype(jnp.float32))
    metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
    new = state.replace(step=state.step + 1, params=keep(params, state.params),
                        opt_state=keep(opt_state, state.opt_state),
                        term_state=keep(aux["term_state"], state.term_state))
    return new, metrics


def init_state(models: Any, frozen: Params, config, optimizer) -> TrainState:
    """Initial state: trainable subtree of the frozen generator, optimizer state, and each
    stateful term's first state."""
    root = jax.random.key(int(config.seed))
    trainable = split_trainable(frozen["generator"], tuple(config.optimizer.trainable))
    trainable = jax.tree.map(lambda x: jnp.array(x, copy=True), trainable)
    term_state = {t.name: t.init(models, frozen, root) for t in enabled_terms(config)
                  if t.stateful}
    return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                      opt_state=optimizer.init(trainable), term_state=term_state,
                      rng=jax.random.key_data(root))
