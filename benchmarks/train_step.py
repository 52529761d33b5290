"""Seconds per training step and peak memory: the demo config and the full paper configuration.

    python -m benchmarks.train_step [--configs demo,full] [--steps 2]

``demo`` = the demo config (tiny models, analytic teacher); ``demo_sd`` the same with the tiny
random-weight SD stack as the teacher. ``full`` = the released PanoHead (tri-grid 256, 48 + 48
samples, 64 px, SR 512) and the SD 1.5 UNet + two ControlNets (edge for the single view, depth
for the grid) + VAE + CLIP text, all with random weights built in code; single view + mirror +
2x2 grid (before SR, renderer-depth control since no Depth Anything weights are used), Tweedie,
LPIPS(alex) and LDIS terms: the paper's step.
``full_single`` / ``full_grid``: the same with only the single-view (+ mirror, Tweedie) or only
the grid score; ``full_onepass``: the paper step with ``split_backward=False`` (one backward
pass over both views, as before: about 25.5 GiB in fp32).
Each configuration runs in its own subprocess; peak = process max RSS (CPU: the random weights,
the compile and the steps) or the device's peak bytes in use (GPU). Compile = lower + compile of
the jitted step; the compiler's freed heap is handed back to the OS before the first step, as
the trainer does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def paper_config(name: str, teacher_dtype: str, devices: int = 1,
                 shard_teacher: bool = False):
    """The validated config of ``name`` (one of :data:`CONFIGS`)."""
    from configs import demo, pixar
    from jaxhead.training.config import validate_config

    c = demo.get_config() if name.startswith("demo") else pixar.get_config()
    c.grid.control = "renderer_depth"
    if name == "demo_sd":  # the demo with its tiny random-weight SD stack as the teacher
        c.demo_teacher = "random_sd"
    if name == "full_single":  # the single-view + mirror half of the paper's step
        c.grid.enabled = False
    elif name == "full_grid":  # the 2x2-grid half (before the SR)
        c.single.enabled = False
    elif name == "full_onepass":  # the paper step with one backward pass over both views
        c.split_backward = False
    c.models.teacher_dtype = teacher_dtype
    if devices > 1:  # one identity per device
        c.batch_size = c.num_devices = devices
    c.models.shard_teacher = shard_teacher
    return validate_config(c)


def build_step(name: str, teacher_dtype: str, *, devices: int = 1, shard_teacher: bool = False,
               abstract: bool = False) -> dict:
    """The jitted train step of ``name`` and its arguments: ``{"step", "state", "frozen",
    "config", "build_s", "frozen_values"}``. ``abstract``: the weights and state are
    ``jax.ShapeDtypeStruct`` with their shardings (built under ``jax.eval_shape``: nothing is
    drawn, allocated or copied to a device), for lowering and compiling only."""
    import jax

    from jaxhead.train import state_shardings
    from jaxhead.training import sharding
    from jaxhead.training.demo import abstract_demo_models, demo_models
    from jaxhead.training.optim import make_optimizer
    from jaxhead.training.step import init_state, train_step
    from jaxhead.utils.compile import jit

    c = paper_config(name, teacher_dtype, devices, shard_teacher)
    size = "demo" if name.startswith("demo") else "full"
    t0 = time.perf_counter()
    models, frozen = (abstract_demo_models if abstract else demo_models)(c, size)
    t_build = time.perf_counter() - t0
    mesh = sharding.make_mesh(c)
    opt = make_optimizer(c)
    st_sh = state_shardings(c, models, frozen, opt, mesh)
    fr_sh = sharding.frozen_shardings(frozen, mesh, c)
    rep = sharding.replicated(mesh)
    if abstract:
        def spec(x, s):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

        state = jax.eval_shape(lambda f: init_state(models, f, c, opt), frozen)
        state, frozen = jax.tree.map(spec, state, st_sh), jax.tree.map(spec, frozen, fr_sh)
    else:
        state = init_state(models, frozen, c, opt)
        state, frozen = jax.device_put(state, st_sh), jax.device_put(frozen, fr_sh)
    step = jit(lambda s, f: train_step(s, f, models=models, config=c, optimizer=opt,
                                       mesh=mesh if devices > 1 else None),
               in_shardings=(st_sh, fr_sh), out_shardings=(st_sh, rep), donate_argnums=0)
    return {"step": step, "state": state, "frozen": frozen, "config": c, "build_s": t_build,
            "frozen_values": int(sum(x.size for x in jax.tree.leaves(frozen)))}


def measure(name: str, steps: int, teacher_dtype: str, compile_only: bool = False,
            devices: int = 1, shard_teacher: bool = False) -> dict:
    from benchmarks.stepping import time_step

    # compile only: shapes only, nothing is copied to the devices (a replicated teacher on
    # 4 fake CPU devices would be 4 host copies)
    b = build_step(name, teacher_dtype, devices=devices, shard_teacher=shard_teacher,
                   abstract=compile_only)
    result = time_step(b["step"], b["state"], b["frozen"], steps=steps,
                       compile_only=compile_only)
    return {"config": name + (f" x{devices}" if devices > 1 else "")
            + (" shard" if shard_teacher else ""), "dtype": teacher_dtype,
            "build_s": b["build_s"], **result, "frozen_values": b["frozen_values"]}


CONFIGS = ("demo", "demo_sd", "full", "full_single", "full_grid", "full_onepass")


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--configs", default="demo,full")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--teacher-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--compile-only", action="store_true",
                    help="lower + compile and report XLA's memory plan without running (for "
                         "configurations that do not fit in memory)")
    ap.add_argument("--devices", type=int, default=1,
                    help="devices on the data axis, one identity each (CPU: fake devices via "
                         "XLA_FLAGS); XLA's plan is then per device, and the collectives of "
                         "the sharded step (count, bytes) are listed")
    ap.add_argument("--shard-teacher", action="store_true",
                    help="shard the frozen teacher's large tensors across the devices")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    from benchmarks import names_arg

    ap = build_parser()
    args = ap.parse_args(argv)
    if args._child:
        print(json.dumps(measure(args._child, args.steps, args.teacher_dtype,
                                 args.compile_only, args.devices, args.shard_teacher)))
        return 0
    rows = []
    for name in names_arg(ap, "--configs", args.configs, CONFIGS):
        env = dict(os.environ)
        if args.devices > 1:  # CPU: fake devices (no effect on GPU / TPU devices)
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                                f"device_count={args.devices}").strip()
        out = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--steps",
                              str(args.steps), "--teacher-dtype", args.teacher_dtype,
                              "--devices", str(args.devices), "--_child", name]
                             + (["--compile-only"] if args.compile_only else [])
                             + (["--shard-teacher"] if args.shard_teacher else []),
                             capture_output=True, text=True, check=False, env=env)
        if out.returncode != 0:
            print(f"{name}: failed (exit {out.returncode})\n{out.stderr[-3000:]}",
                  file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gib = 2.0 ** 30
    print(f"{'config':<22}{'dtype':<10}{'build s':>9}{'compile s':>11}{'s/step':>9}"
          f"{'XLA args GiB':>14}{'XLA temp GiB':>14}{'peak GiB':>10}  device")
    for r in rows:
        print(f"{r['config']:<22}{r['dtype']:<10}{r['build_s']:>9.1f}{r['compile_s']:>11.1f}"
              f"{r['step_s']:>9.1f}{(r['arg_bytes'] or 0) / gib:>14.2f}"
              f"{(r['temp_bytes'] or 0) / gib:>14.2f}"
              f"{r['peak_bytes'] / gib:>10.2f}  {r['device']} ({r['peak_kind']}); "
              f"frozen values {r['frozen_values'] / 1e6:.0f} M")
    if args.devices > 1:  # the sharded step: XLA's per-device plan and its collectives
        print(f"\nper device (XLA's plan) and collectives of the {args.devices}-device step")
        print(f"{'config':<22}{'args GiB':>10}{'temp GiB':>10}{'out GiB':>10}  collectives "
              "(count, MiB)")
        for r in rows:
            coll = ", ".join(f"{k} {n} x {b / 2.0 ** 20:.1f}"
                             for k, (n, b) in sorted(r["collectives"].items())) or "none"
            print(f"{r['config']:<22}{(r['arg_bytes'] or 0) / gib:>10.2f}"
                  f"{(r['temp_bytes'] or 0) / gib:>10.2f}{(r['output_bytes'] or 0) / gib:>10.2f}"
                  f"  {coll}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
