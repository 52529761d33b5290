"""Stylize PanoHead with likelihood distillation from Stable Diffusion.

    python -m jaxhead.train --config configs/pixar.py [--config.steps=2000 ...]
    python -m jaxhead.train --config configs/demo.py          # tiny random models, CPU, minutes

Writes into ``config.workdir``: ``checkpoints/`` (orbax; rerunning with the same workdir
resumes), ``metrics.jsonl`` (+ ``tb/`` TensorBoard events), ``previews/`` (before vs after from
front / side / back, the grid with its control), ``config.json``, and at the end
``generator/`` (the stylized PanoHead, readable by ``load_panohead`` / ``jaxhead.render``) and
``turntables/``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from jaxhead.training import checkpoint
from jaxhead.training.logging import MetricWriter, save_png, to_uint8
from jaxhead.training.models import Models, build_models, describe
from jaxhead.training.step import StepConfig, init_state, make_optimizer, merge, train_step

CHOICES = {
    "objective": ("ld", "sds", "bsd"), "ld_form": ("official", "paper"),
    "alpha_index": ("step", "timestep"), "noise_mode": ("random", "const", "none"),
    "single.control": ("none", "canny", "depth"),
    "grid.control": ("depth", "depth_anything", "renderer_depth", "none"),
    "grid.mode": ("before_sr", "after_sr"), "optimizer.name": ("adam", "sgd"),
    "models.teacher_dtype": ("float32", "bfloat16"),
}


def _get(config, dotted: str):
    v = config
    for part in dotted.split("."):
        v = v[part]
    return v


def validate_config(config) -> None:
    """Clear errors for out-of-range values, before any compute."""
    errs = []
    for key, allowed in CHOICES.items():
        if _get(config, key) not in allowed:
            errs.append(f"{key}={_get(config, key)!r} (choose from {allowed})")
    if not config.prompt:
        errs.append("prompt is empty (use a style config, or --config.prompt='...')")
    if config.preview_every < 0:
        errs.append("preview_every must be >= 0 (0 disables previews)")
    for key in ("steps", "batch_size", "log_every", "checkpoint_every",
                "keep_checkpoints", "num_inference_steps"):
        if int(_get(config, key)) < 1:
            errs.append(f"{key} must be >= 1, got {_get(config, key)}")
    if not 0.0 <= config.truncation_psi <= 1.0:
        errs.append(f"truncation_psi must be in [0, 1], got {config.truncation_psi}")
    if config.optimizer.lr <= 0:
        errs.append(f"optimizer.lr must be > 0, got {config.optimizer.lr}")
    for key in ("single.t_range", "grid.t_range"):
        lo, hi = _get(config, key)
        if not 0.0 <= lo < hi <= 1.0:
            errs.append(f"{key} must satisfy 0 <= lo < hi <= 1, got {(lo, hi)}")
    for key in ("single.yaw_range", "single.pitch_range", "grid.yaw_range", "grid.pitch_range"):
        lo, hi = _get(config, key)
        if not lo <= hi:
            errs.append(f"{key} must satisfy lo <= hi, got {(lo, hi)}")
    if len(config.single.rank_weights) > 4:
        errs.append("single.rank_weights has more than 4 entries (latents have 4 channels)")
    for key in ("guidance_scale", "controlnet_scale", "grad_div", "grad_clamp"):
        if _get(config, key) <= 0:
            errs.append(f"{key} must be > 0")
    for key in ("tweedie_weight", "ldis_weight", "lpips_weight", "grid.weight",
                "single.base_weight", "single.mirror_weight"):
        if _get(config, key) < 0:
            errs.append(f"{key} must be >= 0, got {_get(config, key)}")
    n_dev = config.num_devices or 1
    if not (config.single.enabled or config.grid.enabled):
        errs.append("single.enabled and grid.enabled are both False: nothing to distill")
    if config.batch_size % n_dev:
        errs.append(f"batch_size={config.batch_size} is not divisible by the {n_dev} devices "
                    f"of the data axis")
    if errs:
        raise ValueError("invalid config:\n  - " + "\n  - ".join(errs))


def make_mesh(config):
    from jax.sharding import Mesh

    devices = jax.devices()
    if not config.num_devices:  # the most devices that split the batch evenly
        n = max(d for d in range(1, len(devices) + 1) if config.batch_size % d == 0)
        devices = devices[:n]
    elif config.num_devices:
        if config.num_devices > len(devices):
            raise ValueError(f"num_devices={config.num_devices} but only {len(devices)} "
                             "devices are available")
        devices = devices[: config.num_devices]
    return Mesh(np.array(devices), (config.mesh_axis,))


def _shard_teacher(frozen: dict[str, Any], mesh, axis: str) -> dict[str, Any]:
    """Shard each large teacher tensor along its largest axis divisible by the device count."""
    from jax.sharding import NamedSharding, PartitionSpec

    n = mesh.devices.size

    def place(x):
        dims = [i for i, d in enumerate(x.shape) if d % n == 0 and d >= n]
        if x.size < 1 << 16 or not dims:
            return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
        i = max(dims, key=lambda k: x.shape[k])
        spec = [None] * x.ndim
        spec[i] = axis
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec)))

    out = dict(frozen)
    out["teacher"] = jax.tree.map(place, frozen["teacher"])
    return out


def state_shardings(state, mesh, axis: str):
    """Train-state shardings: the LDIS planes split over identities, the rest replicated."""
    from jax.sharding import NamedSharding, PartitionSpec

    rep = NamedSharding(mesh, PartitionSpec())
    batch = NamedSharding(mesh, PartitionSpec(axis))
    sh = jax.tree.map(lambda _: rep, state)
    return sh.replace(prev_planes=batch, prev_planes_frozen=batch)


class Built(NamedTuple):
    models: Models
    frozen: dict[str, Any]
    init: Any  # () -> fresh placed TrainState
    step: Any  # jitted (state, frozen) -> (state, metrics), state donated
    mesh: Any


def build(config, perceptual_fn: Any = None) -> Built:
    """Models, frozen params (placed), a fresh-state factory, the jitted step, the mesh.

    The step is compiled once and can be reused by several :func:`train_and_evaluate` calls
    with the same model/step settings (``built=``). ``perceptual_fn(x0_hat, render) -> [B]``
    (images in [-1, 1]), if given, replaces LPIPS(alex) in the term weighted by
    ``lpips_weight``."""
    from jax.sharding import NamedSharding, PartitionSpec

    models, frozen = build_models(config)
    mesh = make_mesh(config)
    replicated = NamedSharding(mesh, PartitionSpec())
    frozen = jax.tree.map(lambda x: jax.device_put(x, replicated), frozen)
    if config.models.shard_teacher and mesh.devices.size > 1:
        frozen = _shard_teacher(frozen, mesh, config.mesh_axis)
    optimizer = make_optimizer(config)
    sc = StepConfig.from_config(config)
    st_sh = state_shardings(init_state(models, frozen, config, optimizer), mesh,
                            config.mesh_axis)

    def init():
        return jax.device_put(init_state(models, frozen, config, optimizer), st_sh)

    fr_sh = jax.tree.map(lambda x: x.sharding, frozen)
    # Traced exactly once: a second trace (e.g. a sharding or dtype mismatch) raises instead
    # of silently recompiling the whole step. The counter belongs to this build (chex's
    # assert_max_traces keys a global counter on the source text, which collides across
    # builds in one process).
    step_mesh = mesh if mesh.devices.size > 1 else None
    traces = [0]

    def fn(state, frozen_params):
        traces[0] += 1
        if traces[0] > 1:
            raise AssertionError("the train step was traced a second time (its input shapes, "
                                 "dtypes or shardings changed); this would recompile it")
        return train_step(state, frozen_params, models=models, sc=sc, optimizer=optimizer,
                          mesh=step_mesh, perceptual_fn=perceptual_fn)

    step = jax.jit(fn,
                   in_shardings=(st_sh, fr_sh), out_shardings=(st_sh, replicated),
                   donate_argnums=0)
    return Built(models, frozen, init, step, mesh)


def train_and_evaluate(config, workdir: str | None = None, *, progress: bool = True,
                       built: Built | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns a summary dict (final metrics, paths, state)."""
    workdir = Path(workdir or config.workdir)
    validate_config(config)
    if config.distributed:
        jax.distributed.initialize()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
    if built is None:
        built = build(config)
    models, frozen, step_fn = built.models, built.frozen, built.step
    state = built.init()
    mgr = checkpoint.manager(workdir, config.keep_checkpoints)
    restored = checkpoint.restore_latest(mgr, state)
    if restored is not None:
        state = restored
    start = int(jax.device_get(state.step))
    is_main = jax.process_index() == 0
    writer = MetricWriter(workdir) if is_main else None
    sc = StepConfig.from_config(config)
    preview_fn = None
    if is_main:
        print(f"jaxhead.train: {describe(models)}; {jax.device_count()} device(s) "
              f"({jax.default_backend()}); steps {start} -> {config.steps}; workdir {workdir}")
    metrics: dict[str, float] = {}
    bar = tqdm(total=config.steps, initial=start, disable=not (progress and is_main),
               unit="step", dynamic_ncols=True)
    t_last = time.time()
    for step in range(start, config.steps):
        state, m = step_fn(state, frozen)
        s = step + 1
        if s % config.log_every == 0 or s == config.steps:
            metrics = {k: float(v) for k, v in jax.device_get(m).items()}
            if not all(math.isfinite(v) for v in metrics.values()):
                raise FloatingPointError(f"non-finite metrics at step {s}: {metrics}")
            dt = time.time() - t_last
            t_last = time.time()
            metrics["sec_per_step"] = dt / config.log_every
            if writer:
                writer.write(s, metrics)
            bar.set_postfix({k: f"{metrics[k]:.3g}" for k in
                             ("ld_single", "ld_grid", "tweedie", "lpips", "ldis") if k in metrics})
        bar.update(1)
        if is_main and config.preview_every > 0 and (s % config.preview_every == 0
                                                     or s == config.steps):
            if preview_fn is None:
                from jaxhead.training.preview import make_preview_fn

                preview_fn = make_preview_fn(models, sc, config.preview_identities, config.seed)
            write_previews(workdir, s, preview_fn(state.params, frozen))
        if s % config.checkpoint_every == 0 or s == config.steps:
            checkpoint.save(mgr, state)
    bar.close()
    summary = {"step": int(jax.device_get(state.step)), "metrics": metrics,
               "workdir": str(workdir), "state": state}
    if is_main:
        gen_dir = export_generator(workdir / "generator", models, frozen, state.params, config)
        summary["generator"] = str(gen_dir)
        if config.final_turntable_identities > 0:
            summary["turntables"] = final_turntables(workdir, gen_dir, config)
        writer.close()
    return summary


def write_previews(workdir: Path, step: int, p: dict[str, Any]) -> None:
    from jaxhead.training.preview import compose

    p = {k: to_uint8(np.asarray(v)) for k, v in jax.device_get(p).items()}
    sheet, grid = compose(p)
    save_png(workdir / "previews" / f"{step:06d}_views.png", sheet)
    save_png(workdir / "previews" / f"{step:06d}_grid.png", grid)


def export_generator(out_dir: Path, models: Models, frozen, trainable, config) -> Path:
    """The stylized generator in ``load_panohead``'s format."""
    from jaxhead.models.panohead import save_panohead

    params = merge(jax.device_get(frozen["generator"]), jax.device_get(trainable))
    save_panohead(out_dir, models.G, params, extra={"stylized": {
        "prompt": config.prompt, "steps": int(config.steps)}})
    return out_dir


def final_turntables(workdir: Path, gen_dir: Path, config) -> list[str]:
    from jaxhead import render

    out = workdir / "turntables"
    seeds = ",".join(str(i) for i in range(config.final_turntable_identities))
    frames = max(8, int(config.final_turntable_frames) // 8 * 8)
    render.main(["--generator", str(gen_dir), "--seeds", seeds, "--out", str(out),
                 "--frames", str(frames), "--psi", str(config.truncation_psi)])
    return sorted(str(p) for p in out.glob("*"))


def main(argv: list[str] | None = None) -> int:
    from absl import app, flags
    from ml_collections import config_flags

    flags_ = flags.FLAGS
    config_flags.DEFINE_config_file("config", "configs/demo.py", "experiment config file",
                                    lock_config=True)

    def _main(_):
        from absl import logging

        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        try:
            train_and_evaluate(flags_.config)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    app.run(_main, argv=argv or sys.argv)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.exit(main())

