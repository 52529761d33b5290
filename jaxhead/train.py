"""Stylize PanoHead with likelihood distillation from Stable Diffusion.

    python -m jaxhead.train --config configs/pixar.py [--config.steps=2000 ...]
    python -m jaxhead.train --config configs/demo.py          # tiny random models, CPU, minutes
    python -m jaxhead.train --config configs/portrait.py --config.reference=art/  # one portrait

Writes into ``config.workdir``: ``checkpoints/`` (orbax; rerunning with the same workdir
resumes), ``metrics.jsonl`` (+ ``tb/`` TensorBoard events), ``previews/`` (before vs after from
front / side / back, the grid with its control), ``config.json``, and at the end
``generator/`` (the stylized generator, readable by ``jaxhead.render``) and ``turntables/``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from jaxhead.errors import TrainingDiverged
from jaxhead.training import checkpoint, sharding
from jaxhead.training.config import validate_config
from jaxhead.training.demo import build_models
from jaxhead.training.logging import MetricWriter, save_png
from jaxhead.training.models import Models, describe
from jaxhead.training.optim import make_optimizer, merge
from jaxhead.training.sampling import conditioning_ws
from jaxhead.training.step import init_state, train_step
from jaxhead.training.style_bank import needs_style_bank
from jaxhead.training.terms import enabled_terms
from jaxhead.training.workdir import check_resume, truncate_metrics
from jaxhead.utils.compile import jit
from jaxhead.utils.host_memory import release_free_host_memory
from jaxhead.utils.image_io import to_uint8


class Built(NamedTuple):
    models: Models
    frozen: dict[str, Any]
    init: Any  # () -> fresh placed TrainState
    step: Any  # jitted (state, frozen) -> (state, metrics), state donated
    mesh: Any
    config: Any  # the validated, frozen config the step was built from


def state_shardings(config, models: Models, frozen, optimizer, mesh):
    """Train-state shardings from its abstract shape (nothing is computed): each term's state
    as the term lays it out, everything else replicated."""
    abstract = jax.eval_shape(lambda f: init_state(models, f, config, optimizer), frozen)
    rep = sharding.replicated(mesh)
    batch = sharding.batch_sharded(mesh, config.mesh_axis)
    sh = jax.tree.map(lambda _: rep, abstract)
    return sh.replace(term_state={t.name: t.state_sharding(batch, rep)
                                  for t in enabled_terms(config) if t.stateful})


def build(config, perceptual_fn: Any = None, workdir: str | os.PathLike | None = None
          ) -> Built:
    """Models, frozen params (placed), a fresh-state factory, the jitted step, the mesh.

    An objective that takes style statistics (``sas``) gets ``frozen["style"]`` from the
    style bank in ``workdir`` (default ``config.workdir``), sampled there first if missing
    (:mod:`jaxhead.training.style_bank`).

    The step is compiled once and can be reused by several :func:`train_and_evaluate` calls
    with the same model/step settings (``built=``). ``perceptual_fn(x0_hat, render) -> [B]``
    (images in [-1, 1]), if given, replaces LPIPS(alex) in the term weighted by
    ``lpips_weight``."""
    config = validate_config(config)
    models, frozen = build_models(config)
    if needs_style_bank(config):
        from jaxhead.training import style_bank

        path = Path(workdir or config.workdir) / style_bank.BANK_FILE
        frozen["style"] = style_bank.load_or_make(path, models, frozen, config,
                                                  write=jax.process_index() == 0)
    for term in enabled_terms(config):  # e.g. the portrait's inversion
        extra = term.prepare(models, frozen, config, workdir or config.workdir,
                             write=jax.process_index() == 0)
        if extra:
            nets = frozen.setdefault("terms", {}).get(term.name, {})
            frozen["terms"][term.name] = {**nets, **extra}
    mesh = sharding.make_mesh(config)
    frozen = sharding.place_frozen(frozen, mesh, config)
    optimizer = make_optimizer(config)
    st_sh = state_shardings(config, models, frozen, optimizer, mesh)

    def init():
        return jax.device_put(init_state(models, frozen, config, optimizer), st_sh)

    fr_sh = jax.tree.map(lambda x: x.sharding, frozen)
    # Traced exactly once: a second trace (e.g. a sharding or dtype mismatch) raises instead
    # of silently recompiling the whole step. The counter belongs to this build.
    step_mesh = mesh if mesh.devices.size > 1 else None
    traces = [0]

    def fn(state, frozen_params):
        traces[0] += 1
        if traces[0] > 1:
            raise AssertionError("the train step was traced a second time (its input shapes, "
                                 "dtypes or shardings changed); this would recompile it")
        return train_step(state, frozen_params, models=models, config=config,
                          optimizer=optimizer, mesh=step_mesh, perceptual_fn=perceptual_fn)

    step = jit(fn, in_shardings=(st_sh, fr_sh),
                   out_shardings=(st_sh, sharding.replicated(mesh)), donate_argnums=0)
    return Built(models, frozen, init, step, mesh, config)


def compile_step(step_fn, state, frozen, *, verbose: bool = True) -> None:
    """Compile the jitted step ahead of its first call (the call then reuses the executable),
    print the time and XLA's memory plan, and hand the compiler's freed heap back to the OS
    before the step's buffers are allocated (see ``jaxhead.utils.host_memory``)."""
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, frozen).compile()
    dt = time.perf_counter() - t0
    release_free_host_memory()
    if verbose:
        mem = compiled.memory_analysis()
        plan = "" if mem is None else (
            f"; XLA plan per device: arguments {mem.argument_size_in_bytes / 2**30:.2f} GiB + "
            f"temporaries {mem.temp_size_in_bytes / 2**30:.2f} GiB")
        print(f"jaxhead.train: step compiled in {dt:.1f} s{plan}", flush=True)


def base_defaults() -> dict[str, Any]:
    """Every field of ``configs/base.py`` with its default (JSON values): what a resumed run's
    saved config lacks takes these (:func:`jaxhead.training.workdir.check_resume`). The
    entry point reads the configs; the library below it never does."""
    from configs import base

    return json.loads(base.get_config().to_json_best_effort())


def train_and_evaluate(config, workdir: str | None = None, *, progress: bool = True,
                       built: Built | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns a summary dict (final metrics, paths, state)."""
    workdir = Path(workdir or config.workdir)
    config = validate_config(config)
    check_resume(workdir, config, base_defaults())  # before anything is written
    preview_ids = None  # inverted identities the previews follow (read before any write)
    if config.preview_ws:
        from jaxhead.training.preview import read_preview_ws

        preview_ids = read_preview_ws(config)
    for term in enabled_terms(config):  # e.g. the portrait's reference
        term.check_inputs(config)
    start_distributed(config)
    is_main = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
    if built is None:
        built = build(config, workdir=workdir)
    models, frozen, step_fn = built.models, built.frozen, built.step
    if preview_ids is not None:  # each w fits the generator, before the first step
        from jaxhead.training.preview import check_preview_ws

        check_preview_ws(preview_ids, models.G, config)
    state = built.init()
    mgr = checkpoint.manager(workdir, config.keep_checkpoints)
    restored = checkpoint.restore_latest(mgr, state)
    if restored is not None:
        state = restored
    start = int(jax.device_get(state.step))
    writer = None
    if is_main:
        truncate_metrics(workdir, start)  # steps logged after the checkpoint are re-run
        writer = MetricWriter(workdir, purge_step=start + 1 if start else None)
    preview_fn = None
    if is_main:
        print(f"jaxhead.train: {describe(models, config)}; {jax.device_count()} device(s) "
              f"({jax.default_backend()}); steps {start} -> {config.steps}; workdir {workdir}")
    if start < config.steps:
        compile_step(step_fn, state, frozen, verbose=is_main)
    metrics: dict[str, float] = {}
    bar = tqdm(total=config.steps, initial=start, disable=not (progress and is_main),
               unit="step", dynamic_ncols=True)
    t_last = time.time()
    skipped = 0  # consecutive steps skipped for a non-finite gradient
    for step in range(start, config.steps):
        state, m = step_fn(state, frozen)
        s = step + 1
        if s % config.log_every == 0 or s == config.steps:
            metrics = {k: float(v) for k, v in jax.device_get(m).items()}
            dt = time.time() - t_last
            t_last = time.time()
            metrics["sec_per_step"] = dt / config.log_every
            if writer:
                writer.write(s, metrics)
            bar.set_postfix({k: f"{metrics[k]:.3g}" for k in
                             ("ld_single", "ld_grid", "tweedie", "lpips", "ldis",
                              "portrait_direction", "portrait_spatial") if k in metrics})
        bar.update(1)
        skipped = skipped + 1 if float(m["skipped"]) else 0
        if skipped >= config.max_skipped_steps:
            bar.close()
            if writer:
                writer.close()
            last = mgr.latest_step()
            raise TrainingDiverged(
                f"{skipped} consecutive steps (up to step {s}) had a non-finite gradient and "
                f"were skipped; nothing non-finite was saved (last checkpoint: "
                f"{'none' if last is None else f'step {last}'} in {workdir / 'checkpoints'}). "
                "Lower optimizer.lr, check the teacher and weights, or raise "
                "max_skipped_steps")
        if config.preview_every > 0 and (s % config.preview_every == 0 or s == config.steps):
            if preview_fn is None:
                from jaxhead.training.preview import make_preview_fn

                if preview_ids is None:
                    preview_fn = make_preview_fn(models, config, config.preview_identities,
                                                 config.seed)
                else:
                    chosen = preview_ids[:config.preview_identities]
                    preview_fn = make_preview_fn(
                        models, config, len(chosen), config.seed,
                        ws=np.concatenate([w for _, w in chosen]))
            # every process runs the (global) preview computation; process 0 writes it
            p = fetch_global(preview_fn(state.params, frozen))
            if is_main:
                write_previews(workdir, s, p, None if preview_ids is None
                               else [n for n, _ in preview_ids[:config.preview_identities]])
        if s % config.checkpoint_every == 0 or s == config.steps:
            checkpoint.save(mgr, state)  # finite: non-finite updates are never applied
    bar.close()
    summary = {"step": int(jax.device_get(state.step)), "metrics": metrics,
               "workdir": str(workdir), "state": state}
    if models.demo and config.demo_teacher == "gaussian":
        from jaxhead.training.demo_teacher import palette_rgb, toward_palette

        before, after = demo_restyle(models, config, frozen, state.params)
        summary["head_colours"] = (before, after)
        if is_main:
            rgb = lambda x: "(" + ", ".join(f"{v:+.2f}" for v in x) + ")"  # noqa: E731
            print(f"jaxhead.train: demo teacher: the preview heads' mean colour (RGB in [-1, 1], "
                  f"front, sides, back) {rgb(before.mean((0, 1)))} -> "
                  f"{rgb(after.mean((0, 1)))}, palette {rgb(palette_rgb())}: "
                  f"{np.mean(toward_palette(before, after)):.0%} of the way")
    if is_main:
        gen_dir = export_generator(workdir / "generator", models, frozen, state.params, config)
        summary["generator"] = str(gen_dir)
        if config.final_turntable_identities > 0:
            summary["turntables"] = final_turntables(workdir, gen_dir, config)
        writer.close()
    return summary


def demo_restyle(models: Models, config, frozen, trainable) -> tuple[np.ndarray, np.ndarray]:
    """The demo teacher's visible effect: the preview identities' mean colours
    ``[N, views, 3]``, frozen and stylized (:func:`jaxhead.training.demo_teacher.head_colours`)."""
    from jaxhead.training.demo_teacher import head_colours

    G = models.G
    z = jax.random.normal(jax.random.key(config.seed + 12345),  # the preview identities
                          (config.preview_identities, G.z_dim))
    fn = jit(lambda tr, fr: head_colours(G, fr, merge(fr, tr),
                                             conditioning_ws(G, config, fr, z)))
    before, after = fetch_global(fn(trainable, frozen["generator"]))
    return np.asarray(before), np.asarray(after)


def start_distributed(config) -> None:
    """``jax.distributed.initialize`` with the config's coordinator, process count and id
    (unset ones auto-detected: SLURM, Open MPI, TPU pods), once per process."""
    if not config.distributed or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address or None,
        num_processes=config.num_processes or None,
        process_id=config.process_id if config.process_id >= 0 else None)


def fetch_global(tree: Any) -> Any:
    """Host copies of (possibly multi-process) arrays; a collective: call on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def write_previews(workdir: Path, step: int, p: dict[str, Any],
                   names: list[str] | None = None) -> None:
    from jaxhead.training.preview import compose

    p = {k: to_uint8(np.asarray(v)) for k, v in jax.device_get(p).items()}
    sheet, grid = compose(p, names)
    save_png(workdir / "previews" / f"{step:06d}_views.png", sheet)
    save_png(workdir / "previews" / f"{step:06d}_grid.png", grid)


def export_generator(out_dir: Path, models: Models, frozen, trainable, config) -> Path:
    """The stylized generator in its own format (:func:`jaxhead.generators.load_generator`)."""
    params = merge(jax.device_get(frozen["generator"]), jax.device_get(trainable))
    info = {"prompt": config.prompt, "steps": int(config.steps)}
    if config.get("reference"):
        info["reference"] = str(config.reference)
    models.G.save(out_dir, params, extra={"stylized": info})
    return out_dir


def final_turntables(workdir: Path, gen_dir: Path, config) -> list[str]:
    from jaxhead import render
    from jaxhead.latents import ws_files

    out = workdir / "turntables"
    frames = max(8, int(config.final_turntable_frames) // 8 * 8)
    if config.preview_ws:  # the inverted identities the previews showed
        ids = []
        for f in ws_files(config.preview_ws)[:config.final_turntable_identities]:
            ids += ["--ws", str(f)]
    else:
        ids = ["--seeds", ",".join(str(i) for i in range(config.final_turntable_identities))]
    render.main(["--generator", str(gen_dir), *ids, "--out", str(out),
                 "--frames", str(frames), "--psi", str(config.truncation_psi)])
    return sorted(str(p) for p in out.glob("*"))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: errors in the flags, the config or the input files are one line on stderr
    (exit 2 / 1); see :mod:`jaxhead.errors`."""
    from jaxhead.config_cli import config_main

    return config_main(argv, doc=__doc__, prog="jaxhead.train",
                       documented_in="configs/base.py", validate=validate_config,
                       run=train_and_evaluate)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.exit(main())
