"""Inversion speed and memory: one W+ projection step (and one PTI step) of the released
PanoHead configuration with random weights and the full LPIPS-VGG16 (timing does not depend
on the values).

    python -m benchmarks.invert [--batches 1,8] [--modes project,pti] [--chunks all,1]
                                [--compile-only]

``--chunks``: the projection step with all identities at once (``all``) and/or ``K`` at a time
(``Projector.step(chunk=K)``; PTI rows always run one identity after the other). Each row runs
in a fresh subprocess (peak RSS belongs to it alone). Columns: compile = lower +
compile (s); s/step = median of --repeats steps after a warm-up; XLA args / temp = the compiled
step's argument (generator + LPIPS weights, state, targets) and temporary buffer bytes (its
memory plan, known without running); peak = process max RSS on CPU, device peak bytes in use
on GPU. ``--compile-only`` reports the plan
without running (for batches that do not fit the machine).
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from jaxhead.camera import make_camera
from jaxhead.models.lpips_vgg import random_params
from jaxhead.models.panohead import PanoHead, PanoHeadConfig
from jaxhead.projector import Projector, ProjectorConfig, Stats
from jaxhead.utils.compile import jit


def measure(mode: str, batch: int, chunk: int | None, repeats: int, compile_only: bool
            ) -> dict:
    G = PanoHead(PanoHeadConfig())
    params = jax.jit(lambda k: G.init(k, t_mapping=True))(jax.random.key(0))
    proj = Projector(G, params, random_params(jax.random.key(1)), ProjectorConfig())
    stats = Stats(jnp.zeros(512), jnp.float32(1.0), jnp.zeros(512))  # values do not matter
    images = jax.random.uniform(jax.random.key(2), (batch, 512, 512, 3), minval=-1, maxval=1)
    cams = make_camera(jnp.linspace(-0.5, 0.5, batch), jnp.zeros(batch))
    t0 = time.perf_counter()
    tgt = proj.targets(images, cams, stats)
    jax.block_until_ready(tgt)
    t_targets = time.perf_counter() - t0
    if mode == "project":
        state = proj.init(stats, batch)
        fn = jit(functools.partial(proj._step, chunk=chunk), donate_argnums=2)
        args = (params, proj.lpips_params, state, tgt, stats, jax.random.key(3))
    else:
        state = proj.pti_init(batch)
        w = jnp.zeros((batch, G.num_ws, 512))
        fn = jit(proj._pti_step, donate_argnums=2)
        args = (params, proj.lpips_params, state, tgt, w, jax.random.key(3))
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    t_compile = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    row = {"mode": mode, "batch": batch, "chunk": chunk, "compile_s": t_compile,
           "targets_s": t_targets,
           "xla_args_bytes": getattr(mem, "argument_size_in_bytes", None),
           "xla_temp_bytes": getattr(mem, "temp_size_in_bytes", None),
           "device": jax.devices()[0].device_kind, "time_s": None}
    if not compile_only:
        out = compiled(*args)
        jax.block_until_ready(out)
        times = []
        for _ in range(repeats):
            args = args[:2] + (out[0],) + args[3:]
            t0 = time.perf_counter()
            out = compiled(*args)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - t0)
        row["time_s"] = statistics.median(times)
    dev = jax.devices()[0]
    stats_ = dev.memory_stats() if dev.platform != "cpu" else None
    peak = (stats_ or {}).get("peak_bytes_in_use")
    row["peak_kind"] = "device" if peak is not None else "RSS"
    row["peak_bytes"] = peak if peak is not None else (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return row


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--modes", default="project,pti")
    ap.add_argument("--chunks", default="all", help="projection: 'all' and/or chunk sizes")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--row", default=None, help=argparse.SUPPRESS)  # worker: mode,batch
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.row:
        mode, batch, chunk = a.row.split(",")
        chunk = None if chunk == "all" else int(chunk)
        print(json.dumps(measure(mode, int(batch), chunk, a.repeats, a.compile_only)))
        return 0
    gib = 2.0 ** 30
    print("| mode | batch | chunk | compile s | s / step | XLA args GiB | XLA temp GiB "
          "| peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [(m, b, c) for m in a.modes.split(",") for b in a.batches.split(",")
            for c in (a.chunks.split(",") if m == "project" else ["all"])]
    for mode, batch, chunk in rows:
        cmd = [sys.executable, "-m", "benchmarks.invert", "--row", f"{mode},{batch},{chunk}",
               "--repeats", str(a.repeats)] + (["--compile-only"] if a.compile_only else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["?"])[-1]
            print(f"| {mode} | {batch} | {chunk} | failed: {tail[:80]} | | | | |")
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        t = "—" if row["time_s"] is None else f"{row['time_s']:.2f}"
        print(f"| {mode} | {batch} | {chunk} | {row['compile_s']:.1f} | {t} | "
              f"{row['xla_args_bytes'] / gib:.2f} | {row['xla_temp_bytes'] / gib:.2f} | "
              f"{row['peak_bytes'] / gib:.2f} ({row['peak_kind']}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
