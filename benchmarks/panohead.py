"""PanoHead generator speed and memory (random weights; timing does not depend on values).

    python -m benchmarks.panohead [--config full|demo] [--batch 1] [--repeats 3]
                                  [--cpu-conv eigen|ynnpack]

Rows (each measured in a fresh subprocess so that peak RSS belongs to that row alone):
  forward          G.synthesis for one 512 px image (stochastic ray sampling, random noise,
                   no background network: the training-time render), ws given.
  forward+backward gradient of mean(image) w.r.t. backbone.synthesis + superresolution params.
Columns: compile = lower + compile (s); time = median of --repeats calls after a warm-up (s);
XLA temp = the compiled call's temporary buffer bytes; peak = process max RSS on CPU, device
peak bytes in use on GPU. ``--cpu-conv ynnpack`` compiles with jaxlib's default
(YNNPACK convolutions) instead of jaxhead's (``jaxhead.utils.compile``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks import names_arg
from jaxhead.camera import make_camera
from jaxhead.models.panohead import PanoHead, PanoHeadConfig
from jaxhead.models.panohead.demo import demo_config
from jaxhead.ops.platform import target
from jaxhead.utils.compile import CPU_CONV_CHOICES, compiler_options


def _config(name: str) -> PanoHeadConfig:
    return PanoHeadConfig() if name == "full" else demo_config()


def build(config: str, mode: str, batch: int, cpu_conv: str = "eigen") -> tuple:
    """The jitted ``forward`` or ``forward+backward`` function of one row and its arguments
    (compiled with :func:`jaxhead.utils.compile.compiler_options` of ``cpu_conv``)."""
    G = PanoHead(_config(config))
    params = jax.jit(G.init)(jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (batch, G.config.z_dim))
    c = make_camera(jnp.linspace(-0.5, 0.5, batch), jnp.zeros(batch))
    ws = G.mapping(params, z, c, 0.7, 14)
    trainable = {"synthesis": params["params"]["backbone"]["synthesis"],
                 "superresolution": params["params"]["superresolution"]}

    def image(tr, ws, c, key):
        p = {"params": {**params["params"], "superresolution": tr["superresolution"],
                        "backbone": {**params["params"]["backbone"],
                                     "synthesis": tr["synthesis"]}},
             "buffers": params["buffers"]}
        return G.synthesis(p, ws, c, noise_mode="random", rng=key, background="none")["image"]

    opts = compiler_options(cpu_conv=cpu_conv)
    if mode == "forward":
        fn = jax.jit(image, compiler_options=opts)
    else:
        fn = jax.jit(jax.grad(lambda tr, ws, c, key: jnp.mean(image(tr, ws, c, key))),
                     compiler_options=opts)
    return fn, (trainable, ws, c, jax.random.key(2))


def measure(config: str, mode: str, batch: int, repeats: int, cpu_conv: str = "eigen") -> dict:
    fn, args = build(config, mode, batch, cpu_conv)
    t0 = time.perf_counter()
    with target(jax.default_backend()):  # traced for this platform, as jaxhead's jit does
        compiled = fn.lower(*args).compile()
    t_compile = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    mem = compiled.memory_analysis()
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    peak = (stats or {}).get("peak_bytes_in_use")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"config": config, "mode": mode, "batch": batch, "compile_s": t_compile,
            "time_s": statistics.median(times), "xla_temp_bytes": getattr(
                mem, "temp_size_in_bytes", None), "peak_bytes": peak,
            "peak_kind": "device" if stats else "RSS", "device": dev.device_kind}


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="full", choices=["full", "demo"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="forward,forward+backward")
    ap.add_argument("--cpu-conv", default="eigen", choices=CPU_CONV_CHOICES,
                    help="CPU convolutions: XLA's (jaxhead's default) or YNNPACK (jaxlib's)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args._child:
        print(json.dumps(measure(args.config, args._child, args.batch, args.repeats,
                                 args.cpu_conv)))
        return 0
    rows = []
    for mode in names_arg(ap, "--modes", args.modes, ("forward", "forward+backward")):
        out = subprocess.run([sys.executable, "-m", "benchmarks.panohead", "--config",
                              args.config, "--batch", str(args.batch), "--repeats",
                              str(args.repeats), "--cpu-conv", args.cpu_conv, "--_child", mode],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return out.returncode
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gib = 2.0 ** 30
    print(f"PanoHead ({args.config} config, batch {args.batch}) on {rows[0]['device']}"
          f"{', YNNPACK convolutions' if args.cpu_conv == 'ynnpack' else ''}")
    print(f"{'mode':<18}{'compile s':>10}{'time s':>10}{'XLA temp GiB':>14}{'peak GiB':>10}")
    for r in rows:
        temp = r["xla_temp_bytes"]
        print(f"{r['mode']:<18}{r['compile_s']:>10.1f}{r['time_s']:>10.2f}"
              f"{(temp or 0) / gib:>14.2f}{r['peak_bytes'] / gib:>10.2f}  ({r['peak_kind']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
