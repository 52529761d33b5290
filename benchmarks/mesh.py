"""Mesh extraction speed and memory (random weights, sculpted into a closed blob so that
marching cubes has a head-sized surface; the density query's cost does not depend on values).

    python -m benchmarks.mesh [--config full|demo] [--res 256,512] [--chunk 262144] [--colors]

One row per grid resolution N, each in a fresh subprocess (peak RSS belongs to that row):
  planes s     compile + run of the tri-grid backbone for one identity (jitted)
  compile s    lower + compile of one density chunk (``--chunk`` points)
  density s    the N^3 grid, all chunks (``jaxhead.mesh.density_grid``), and its points / s
  mc s         PanoHead's flip / trim / transpose + scikit-image marching cubes
  colors s     the generator's colour at every vertex (with --colors)
  write s      .ply + .obj
  XLA temp     temporary buffers of the compiled chunk; peak: process max RSS on CPU (device
               peak bytes in use on GPU, host RSS beside it)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxhead import mesh as M
from jaxhead.models.panohead import PanoHead, PanoHeadConfig
from jaxhead.models.panohead.demo import demo_config, demo_params, sculpt
from jaxhead.turntable import seed_ws
from jaxhead.utils import mesh_io


def measure(config: str, res: int, chunk: int, colors: bool) -> dict:
    G = PanoHead(PanoHeadConfig() if config == "full" else demo_config())
    params = sculpt(demo_params(G, 0))  # host-drawn random weights + a closed blob
    ws = seed_ws(G, params, 0, psi=0.7, cutoff=14)
    t0 = time.perf_counter()
    rep = jax.block_until_ready(M.representation_fn(G, "const")(params, ws))
    t_planes = time.perf_counter() - t0
    field = M.generator_field(G)
    args = {"params": params, "ws": ws, "rep": rep}
    t0 = time.perf_counter()
    chunk = min(chunk, res ** 3)
    compiled = M._density_chunk.lower(field, args, jnp.int32(0), resolution=res,
                                      box_size=G.box_size, chunk=chunk).compile()
    t_compile = time.perf_counter() - t0
    temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)
    jax.block_until_ready(M._density_chunk(field, args, jnp.int32(0), resolution=res,
                                           box_size=G.box_size, chunk=chunk))  # warm jit cache
    t0 = time.perf_counter()
    grid = M.density_grid(field, args, resolution=res, box_size=G.box_size, chunk=chunk,
                          progress=False)
    t_density = time.perf_counter() - t0
    t0 = time.perf_counter()
    mesh = M.marching_cubes(grid, box_size=G.box_size, level=0.0)
    t_mc = time.perf_counter() - t0
    del grid
    t_col = None
    if colors:
        t0 = time.perf_counter()
        mesh = M.Mesh(mesh.vertices, mesh.faces,
                      M.vertex_colors(G, params, ws, rep, mesh.vertices, chunk=chunk))
        t_col = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        mesh_io.write_ply(Path(d) / "m.ply", mesh)
        mesh_io.write_obj(Path(d) / "m.obj", mesh)
        t_write = time.perf_counter() - t0
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"config": config, "res": res, "chunk": chunk, "planes_s": t_planes,
            "compile_s": t_compile, "density_s": t_density, "mc_s": t_mc, "colors_s": t_col,
            "write_s": t_write, "vertices": int(len(mesh.vertices)),
            "faces": int(len(mesh.faces)), "xla_temp_bytes": temp, "rss_bytes": rss,
            "device_peak_bytes": (stats or {}).get("peak_bytes_in_use"),
            "device": dev.device_kind}


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="full", choices=["full", "demo"])
    ap.add_argument("--res", default="256,512", help="grid resolutions N")
    ap.add_argument("--chunk", type=int, default=M.DEFAULT_CHUNK)
    ap.add_argument("--colors", action="store_true")
    ap.add_argument("--_child", type=int, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args._child:
        print(json.dumps(measure(args.config, args._child, args.chunk, args.colors)))
        return 0
    rows = []
    for res in (int(r) for r in args.res.split(",")):
        cmd = [sys.executable, "-m", "benchmarks.mesh", "--config", args.config, "--chunk",
               str(args.chunk), "--_child", str(res)] + (["--colors"] if args.colors else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return out.returncode
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gib = 2.0 ** 30
    print(f"mesh extraction ({args.config} config, random weights, chunk {args.chunk}) on "
          f"{rows[0]['device']}")
    print(f"{'N':>5}{'planes s':>10}{'compile s':>10}{'density s':>11}{'Mpt/s':>7}{'mc s':>7}"
          f"{'colors s':>9}{'write s':>8}{'vertices':>10}{'XLA temp GiB':>13}  peak GiB")
    for r in rows:
        col = "-" if r["colors_s"] is None else f"{r['colors_s']:.1f}"
        peak = r["device_peak_bytes"]
        peak_s = (f"{r['rss_bytes'] / gib:.2f} (RSS)" if peak is None else
                  f"{peak / gib:.2f} (dev), {r['rss_bytes'] / gib:.2f} RSS")
        print(f"{r['res']:>5}{r['planes_s']:>10.1f}{r['compile_s']:>10.1f}"
              f"{r['density_s']:>11.1f}{r['res'] ** 3 / r['density_s'] / 1e6:>7.2f}"
              f"{r['mc_s']:>7.1f}{col:>9}{r['write_s']:>8.1f}{r['vertices']:>10}"
              f"{(r['xla_temp_bytes'] or 0) / gib:>13.2f}  {peak_s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
