"""Per-op profile of one jitted call (XLA:CPU or GPU), optionally beside torch.profiler.

    python -m benchmarks.op_profile --model panohead [--config full|demo] [--backward]
    python -m benchmarks.op_profile --model unet [--latent 64] [--torch]

The jaxhead side is traced once with ``jax.profiler`` after a warm-up; every executed HLO
instruction (XLA:CPU thunk, or GPU kernel tagged with its HLO op) is matched to the optimized
HLO module, which gives its category (the convolution / dot inside a fusion, else the fusion
kind or opcode), its FLOPs (convolutions and dots, counted from shapes; loops multiplied by
their known trip count) and the jaxhead source function that emitted it. Times are shares
of the wall clock: an instruction runs from its start to its completion event, time when several
run at once is split equally among them, a while loop only counts time outside its body's ops.

``--torch`` (UNet) runs diffusers' UNet on the same shapes under ``torch.profiler`` and prints
its per-operator table (self CPU time, FLOPs where torch counts them).

Not named ``profile.py``: benchmarks run as scripts (``python benchmarks/teacher.py``) put this
folder first on ``sys.path``, where that name shadows the standard library module torch imports.
"""

from __future__ import annotations

import argparse
import collections
import glob
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field

import jax
import numpy as np

# ---------------------------------------------------------------------------------------------
# Optimized HLO text -> per-instruction category, FLOPs and source
# ---------------------------------------------------------------------------------------------

_SHAPE = re.compile(r"([a-z]+\d*)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")


@dataclass
class Instr:
    """One HLO instruction: opcode, result shape text, attributes, called computations."""

    name: str
    opcode: str
    shape: str
    rest: str
    calls: list[str] = field(default_factory=list)
    operands: list[str] = field(default_factory=list)


def _dims(shape_text: str) -> list[int]:
    m = _SHAPE.search(shape_text)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _parse_hlo(text: str) -> tuple[dict[str, list[Instr]], dict[str, Instr], dict[str, str]]:
    """Computations -> instructions, instruction name -> Instr, and stack_frame_id -> source."""
    comps: dict[str, list[Instr]] = {}
    by_name: dict[str, Instr] = {}
    cur = None
    files, funcs, locs, frames = {}, {}, {}, {}
    section = None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        if section and line and line[0].isdigit():
            k, v = line.split(" ", 1)
            if section == "FileNames":
                files[k] = v.strip('"')
            elif section == "FunctionNames":
                funcs[k] = v.strip('"')
            elif section == "FileLocations":
                f = re.search(r"file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", v)
                locs[k] = (f.group(1), f.group(2), f.group(3)) if f else None
            else:
                f = re.search(r"file_location_id=(\d+) parent_frame_id=(\d+)", v)
                frames[k] = (f.group(1), f.group(2)) if f else None
            continue
        section = None if not line.strip() else section
        m = _COMP.match(line)
        if m:
            cur = comps.setdefault(m.group(1), [])
            continue
        m = _INSTR.match(line)
        if m and cur is not None:
            name, shape, opcode, rest = m.groups()
            ins = Instr(name, opcode, shape, rest)
            ins.calls = re.findall(r"(?:calls|body|to_apply|condition)=%?([\w.\-]+)", rest)
            ins.calls += [c.strip().lstrip("%") for grp in re.findall(
                r"(?:branch_computations|called_computations)=\{([^}]*)\}", rest)
                for c in grp.split(",")]
            ins.operands = re.findall(r"%([\w.\-]+)", rest.split("),")[0])
            cur.append(ins)
            by_name[name] = ins
    source = {}
    for fid in frames:
        # innermost frame inside the project (jaxhead/), else the innermost frame
        chain, f = [], fid
        while f in frames and frames[f] and len(chain) < 64:
            loc = locs.get(frames[f][0])
            if loc:
                chain.append((files.get(loc[0], "?"), funcs.get(loc[1], "?"), loc[2]))
            if frames[f][1] == f:
                break
            f = frames[f][1]
        pick = next((c for c in chain if "jaxhead/" in c[0]), chain[0] if chain else None)
        if pick:
            path = pick[0].split("jaxhead/")[-1] if "jaxhead/" in pick[0] else \
                os.path.basename(pick[0])
            source[fid] = f"{path}:{pick[1]}"
    return comps, by_name, source


def _flops(ins: Instr, by_name: dict[str, Instr]) -> float:
    """FLOPs of a convolution or dot instruction (2 per multiply-add), else 0."""
    out = _dims(ins.shape)
    if ins.opcode == "convolution" and len(ins.operands) >= 2:
        k = by_name.get(ins.operands[1])
        kdims = _dims(k.shape) if k else []
        m = re.search(r"dim_labels=\w+_(\w+)->", ins.rest)
        if not kdims or not m or "o" not in m.group(1):
            return 0.0
        cout = kdims[m.group(1).index("o")]
        # each output element sums over prod(kernel) / cout products; this also holds for
        # grouped and batch-grouped (weight-gradient) convolutions
        return 2.0 * math.prod(out) * math.prod(kdims) / cout if cout else 0.0
    if ins.opcode == "dot" and ins.operands:
        lhs = by_name.get(ins.operands[0])
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.rest)
        if not lhs or not m:
            return 0.0
        ld = _dims(lhs.shape)
        contract = math.prod(ld[int(i)] for i in m.group(1).split(",") if i)
        return 2.0 * math.prod(out) * contract
    return 0.0


def _trip_count(ins: Instr) -> int:
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.rest)
    return int(m.group(1)) if m else 1


def _classify(comps, by_name) -> dict[str, tuple[str, float]]:
    """Instruction name -> (category, FLOPs including called computations)."""
    memo: dict[str, tuple[str, float]] = {}

    def comp_info(cname: str) -> tuple[str | None, float]:
        cat, total = None, 0.0
        for ins in comps.get(cname, []):
            c, f = info(ins)
            total += f
            if c.startswith(("conv ", "dot ")) and cat is None:  # the first conv/dot inside
                cat = c
        return cat, total

    def info(ins: Instr) -> tuple[str, float]:
        if ins.name in memo:
            return memo[ins.name]
        memo[ins.name] = ("?", 0.0)  # cycle guard
        if ins.opcode == "convolution":
            w = re.search(r"window=\{size=(\w+)", ins.rest)
            kind = "conv " + (w.group(1) if w else "1x1")
            if "batch_group_count" in ins.rest:
                kind += " (weight grad)"
            res = (kind, _flops(ins, by_name))
        elif ins.opcode == "dot":
            res = ("dot (GEMM)", _flops(ins, by_name))
        elif ins.calls:
            cat, f = None, 0.0
            for c in ins.calls:
                cc, ff = comp_info(c)
                f += ff
                cat = cat or cc
            if ins.opcode == "while":
                f *= _trip_count(ins)
                cat = f"while loop ({cat})" if cat else "while loop"
            elif cat is None:
                kind = re.search(r"kind=(k\w+)", ins.rest)
                cat = {"kLoop": "elementwise fusion", "kInput": "reduce fusion",
                       "kOutput": "output fusion"}.get(kind.group(1) if kind else "",
                                                       f"{ins.opcode}")
            res = (cat, f)
        else:
            res = (ins.opcode, 0.0)
        memo[ins.name] = res
        return res

    for instrs in comps.values():
        for ins in instrs:
            info(ins)
    return memo


# ---------------------------------------------------------------------------------------------
# Trace -> self time per HLO instruction
# ---------------------------------------------------------------------------------------------


def _op_times(xspace_path: str, module_prefix: str,
              containers: set[str]) -> dict[str, float]:
    """Seconds attributed to each HLO instruction from a profiler ``.xplane.pb``.

    An instruction runs from its start event to its ``end:`` event (linked by flow ids; XLA:CPU
    runs some thunks, e.g. Eigen convolutions, asynchronously, so the start event alone is only
    the dispatch). Wall time where several instructions run at once is split equally among them;
    ``containers`` (while loops, calls) get only the time when nothing inside them runs.
    """
    from jax.profiler import ProfileData

    pd = ProfileData.from_file(xspace_path)
    starts: dict[int, tuple[int, str]] = {}
    ends: dict[int, int] = {}
    for plane in pd.planes:
        for line in plane.lines:
            for e in line.events:
                stats = dict(e.stats)
                if "hlo_op" in stats and str(stats.get("hlo_module", "")).startswith(
                        module_prefix):  # no flow id (e.g. GPU kernels): the event's own span
                    flow = int(stats["_p"]) if "_p" in stats else -1 - len(starts)
                    starts[flow] = (e.start_ns, str(stats["hlo_op"]), e.start_ns + e.duration_ns)
                elif e.name.startswith("end:") and "_c" in stats:
                    ends[int(stats["_c"])] = e.start_ns
    marks = []
    for flow, (s, op, e_sync) in starts.items():
        e = max(ends.get(flow, e_sync), e_sync)
        marks += [(s, 1, op), (e, -1, op)]
    marks.sort(key=lambda m: (m[0], -m[1]))
    out: dict[str, float] = collections.defaultdict(float)
    active: collections.Counter = collections.Counter()
    prev = None
    for t, kind, op in marks:
        if prev is not None and t > prev and active:
            leaves = [o for o in active if o not in containers] or list(active)
            share = (t - prev) * 1e-9 / len(leaves)
            for o in leaves:
                out[o] += share
        prev = t
        active[op] += kind
        if active[op] <= 0:
            del active[op]
    return out


def profile(compiled, args, *, runs: int = 1) -> tuple[dict[str, float], float, str]:
    """Trace ``runs`` calls of ``compiled(*args)`` (after one warm-up) -> (self seconds per HLO
    instruction averaged per call, best wall seconds, HLO text)."""
    jax.block_until_ready(compiled(*args))
    d = tempfile.mkdtemp(prefix="jaxhead_profile_")
    walls = []
    jax.profiler.start_trace(d)
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        walls.append(time.perf_counter() - t0)
    jax.profiler.stop_trace()
    path = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0]
    text = compiled.as_text()
    module = re.match(r"HloModule\s+([\w.\-]+)", text).group(1)
    containers = {i.name for i in _parse_hlo(text)[1].values()
                  if i.opcode in ("while", "call", "conditional")}
    times = {k: v / runs for k, v in _op_times(path, module, containers).items()}
    return times, min(walls), text


def tables(times: dict[str, float], hlo_text: str, top: int = 15) -> str:
    """Markdown tables: per category, per source function, top instructions."""
    comps, by_name, source = _parse_hlo(hlo_text)
    info = _classify(comps, by_name)
    total = sum(times.values()) or 1.0
    rows_cat: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    rows_src: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    singles = []
    for name, t in times.items():
        ins = by_name.get(name)
        cat, fl = info.get(name, ("?", 0.0))
        sf = re.search(r"stack_frame_id=(\d+)", ins.rest) if ins else None
        src = source.get(sf.group(1), "?") if sf else "?"
        for rows, key in ((rows_cat, cat), (rows_src, src)):
            rows[key][0] += t
            rows[key][1] += fl
            rows[key][2] += 1
        singles.append((t, name, cat, ins.shape.split("{")[0] if ins else "?", fl, src))

    def fmt(rows, title):
        lines = [f"| {title} | ops | time ms | share | GFLOP | GFLOP/s |",
                 "|---|---|---|---|---|---|"]
        for k, (t, fl, n) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
            if t / total < 0.002:
                continue
            rate = f"{fl / t / 1e9:.0f}" if fl and t > 0 else ""
            gf = f"{fl / 1e9:.1f}" if fl else ""
            lines.append(f"| {k} | {n} | {t * 1e3:.0f} | {100 * t / total:.1f}% | {gf} | {rate} |")
        return "\n".join(lines)

    flops = sum(fl for _, _, _, _, fl, _ in singles)
    out = [f"attributed time {total:.3f} s, {flops / 1e9:.1f} GFLOP in conv/dot\n",
           fmt(rows_cat, "category"), "", fmt(rows_src, "source (jaxhead function)"), "",
           "| op | category | shape | time ms | GFLOP/s | source |", "|---|---|---|---|---|---|"]
    for t, name, cat, shape, fl, src in sorted(singles, reverse=True)[:top]:
        rate = f"{fl / t / 1e9:.0f}" if fl and t > 0 else ""
        out.append(f"| {name} | {cat} | {shape} | {t * 1e3:.0f} | {rate} | {src} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def _unet_jax(latent: int, batch: int):
    import jax.numpy as jnp

    from benchmarks.teacher import SD15_UNET, _random_params
    from jaxhead.models import unet as unet_lib
    from jaxhead.utils.compile import jit

    unet = unet_lib.UNet2DConditionModel(unet_lib.UNetConfig.from_diffusers(SD15_UNET))
    params = {"params": _random_params(unet_lib.expected_shapes(unet), jnp.float32,
                                       np.random.default_rng(0))}
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((batch, latent, latent, 4), dtype=np.float32))
    t = jnp.full((batch,), 500)
    ctx = jnp.asarray(rng.standard_normal((batch, 77, 768), dtype=np.float32))
    return jit(unet.apply), (params, x, t, ctx)


def _unet_torch_table(latent: int, batch: int, top: int) -> str:
    import torch
    from diffusers import UNet2DConditionModel
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from benchmarks.teacher import SD15_UNET

    torch.set_num_threads(os.cpu_count() or 1)
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    x = torch.randn(batch, 4, latent, latent)
    t = torch.full((batch,), 500)
    ctx = torch.randn(batch, 77, 768)
    with torch.no_grad():
        unet(x, t, ctx)
        t0 = time.perf_counter()
        unet(x, t, ctx)
        wall = time.perf_counter() - t0
        with tprofile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            unet(x, t, ctx)
    evs = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in evs) * 1e-6 or 1.0
    lines = [f"torch {torch.__version__} diffusers UNet: wall {wall:.2f} s (unprofiled), "
             f"operators' self time {total:.2f} s\n",
             "| torch op | calls | self ms | share | GFLOP | GFLOP/s |",
             "|---|---|---|---|---|---|"]
    for e in sorted(evs, key=lambda e: -e.self_cpu_time_total)[:top]:
        t_s = e.self_cpu_time_total * 1e-6
        fl = getattr(e, "flops", 0) or 0
        rate = f"{fl / t_s / 1e9:.0f}" if fl and t_s > 0 else ""
        lines.append(f"| {e.key} | {e.count} | {t_s * 1e3:.0f} | {100 * t_s / total:.1f}% | "
                     f"{fl / 1e9:.1f} | {rate} |" if fl else
                     f"| {e.key} | {e.count} | {t_s * 1e3:.0f} | {100 * t_s / total:.1f}% | | |")
    return "\n".join(lines)


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["panohead", "unet"], default="panohead")
    ap.add_argument("--config", choices=["full", "demo"], default="full", help="PanoHead size")
    ap.add_argument("--backward", action="store_true",
                    help="PanoHead: gradient of mean(image) w.r.t. synthesis + SR parameters")
    ap.add_argument("--latent", type=int, default=64, help="UNet latent size")
    ap.add_argument("--batch", type=int, default=None,
                    help="batch (default: 1 for PanoHead, 2 = the CFG batch for the UNet)")
    ap.add_argument("--runs", type=int, default=1, help="profiled calls (averaged)")
    ap.add_argument("--top", type=int, default=15, help="rows of the per-op tables")
    ap.add_argument("--torch", action="store_true",
                    help="UNet: also diffusers under torch.profiler")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.model == "panohead":
        from benchmarks.panohead import build

        batch = a.batch or 1
        fn, args = build(a.config, "forward+backward" if a.backward else "forward", batch)
        what = (f"PanoHead {a.config}, batch {batch}, "
                f"{'forward+backward' if a.backward else 'forward'}")
    else:
        batch = a.batch or 2
        fn, args = _unet_jax(a.latent, batch)
        what = f"SD 1.5 UNet, batch {batch}, {a.latent}x{a.latent} latents, fp32"
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    times, wall, text = profile(compiled, args, runs=a.runs)
    load = os.getloadavg()[0]
    print(f"{what} on {jax.devices()[0].device_kind}: compile {compile_s:.1f} s, "
          f"profiled call {wall:.2f} s (load average {load:.1f})\n")
    print(tables(times, text, a.top))
    if a.torch and a.model == "unet":
        del compiled, args, fn
        print()
        print(_unet_torch_table(a.latent, batch, a.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
