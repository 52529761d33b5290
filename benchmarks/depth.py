"""Time the teacher's control signals: Depth Anything V2 depth for one 2x2 grid, and Canny.

    python -m benchmarks.depth [--configs vits,vitb] [--repeats 3]   # from the repository root

Rows:
  depth 4 views -> 2x2 grid   the official grid control: 4 views of 512 px, each through the
                              network at 518 px, back to 512, min-max, uint8, Lanczos to 256,
                              tiled into the 512 px grid (4 network passes).
  depth grid image (1 pass)   for scale: one 512 px image through the network once.
  canny 1 view / 4 views      canny_control on 512 px render-like images (single-view edge
                              control; the official uses 1 view per step).
Weights are random (timing does not depend on values). Compile = lower + compile time; time per
call = median of --repeats runs after one warm-up; memory = XLA's temp + argument + output bytes
of the compiled call, and on GPUs the device's peak bytes in use.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import names_arg
from jaxhead.models import depth_anything as da
from jaxhead.ops.canny import canny_control
from jaxhead.utils.compile import jit


def random_params(model: da.DepthAnythingV2, seed: int = 0):
    """Random variables in the model's shapes, drawn on the host (no init compile)."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if "scale" in name or "gamma" in name:
            return np.ones(s.shape, np.float32)
        if "bias" in name:
            return np.zeros(s.shape, np.float32)
        return (0.02 * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.device_put(jax.tree_util.tree_map_with_path(draw, model.param_shapes()))


def grid2x2(tiles: jax.Array) -> jax.Array:
    """``[4, h, w, C]`` -> ``[1, 2h, 2w, C]`` (row-major: views 0 1 / 2 3, as the official)."""
    top = jnp.concatenate([tiles[0], tiles[1]], axis=1)
    bottom = jnp.concatenate([tiles[2], tiles[3]], axis=1)
    return jnp.concatenate([top, bottom], axis=0)[None]


def render_like(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Head-like test renders in [-1, 1] (shaded ellipse, striped hair, flat background): the
    hysteresis loop's trip count depends on edge-chain lengths, so noise would flatter Canny."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:size, :size] + 0.5) / size * 2 - 1
    out = []
    for i in range(n):
        r2 = ((xx - 0.05 * i) / 0.55) ** 2 + (yy / 0.72) ** 2
        face = np.where(r2 < 1, np.sqrt(np.clip(1 - r2, 0, 1)) - 0.2, 0.8)
        face = np.where((r2 < 1) & (yy < -0.35), -0.6 + 0.25 * np.sin(90 * xx + 8 * yy), face)
        img = np.stack([face, 0.9 * face, 0.8 * face], -1) + 0.01 * rng.normal(size=(size, size, 3))
        out.append(img)
    return np.stack(out).astype(np.float32)


def bench(fn: Callable, *args, repeats: int) -> dict[str, float]:
    t0 = time.perf_counter()
    compiled = jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    mem = compiled.memory_analysis()
    xla_mb = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
              + mem.output_size_in_bytes) / 2**20 if mem is not None else float("nan")
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU
    peak_mb = stats.get("peak_bytes_in_use", float("nan")) / 2**20  # cumulative over the run
    return dict(compile_s=compile_s, call_ms=1e3 * statistics.median(times), xla_mb=xla_mb,
                peak_mb=peak_mb)


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="vits,vitb")
    ap.add_argument("--size", type=int, default=512, help="view side in pixels")
    ap.add_argument("--repeats", type=int, default=3)
    return ap


def main() -> None:
    ap = build_parser()
    a = ap.parse_args()
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, float32, "
          f"default matmul precision")
    rng = np.random.default_rng(0)
    views = jax.device_put(rng.uniform(-1, 1, (4, a.size, a.size, 3)).astype(np.float32))

    rows = []
    for name in names_arg(ap, "--configs", a.configs, da.CONFIGS):
        model = da.DepthAnythingV2(da.CONFIGS[name])
        params = random_params(model)
        grid_fn = lambda p, x, m=model: grid2x2(da.depth_control(m, p, x, a.size // 2))
        rows.append((f"depth {name}: 4 views -> 2x2 grid",
                     bench(grid_fn, params, views, repeats=a.repeats)))
        one_fn = partial(da.depth_control, model)
        rows.append((f"depth {name}: grid image (1 pass)",
                     bench(one_fn, params, views[:1], repeats=a.repeats)))
        del params
    renders = jax.device_put(render_like(4, a.size))
    rows.append(("canny: 1 view", bench(canny_control, renders[:1], repeats=a.repeats)))
    rows.append(("canny: 4 views", bench(canny_control, renders, repeats=a.repeats)))

    print(f"\n| {'what':36s} | compile s | ms / call | XLA MiB | peak MiB |")
    print(f"|{'-' * 38}|-----------|-----------|---------|----------|")
    for what, r in rows:
        peak = "n/a" if np.isnan(r["peak_mb"]) else f"{r['peak_mb']:.0f}"
        print(f"| {what:36s} | {r['compile_s']:9.1f} | {r['call_ms']:9.1f} | "
              f"{r['xla_mb']:7.0f} | {peak:>8s} |")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"\nprocess peak RSS: {rss:.0f} MiB (host memory; includes all compiled programs)")


if __name__ == "__main__":
    main()
