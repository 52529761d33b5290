"""One table of what matters on whatever accelerator is present (GPU, TPU; or CPU with --small).

    python -m benchmarks.device [--small] [--rows step-fp32,step-bf16,...] [--steps 2]

Rows (each in its own subprocess, so that its peak memory is its own):
  step-fp32 / step-bf16  the paper's train step (``benchmarks.train_step`` "full": released
                         PanoHead, SD 1.5 UNet + 2 ControlNets, VAE, LPIPS; random weights) with
                         the teacher in float32 / bfloat16
  panohead-fwd / -fwdbwd the PanoHead render of one 512 px image, and its gradient w.r.t. the
                         trained params (``benchmarks.panohead``)
  unet-fwd-fp32 / -bf16  the SD 1.5 UNet on the CFG batch of 2 (64x64 latents)
  torch-unet-fp32 / -fp16  diffusers' UNet on the same batch with PyTorch on CUDA, where torch
                         with CUDA and diffusers are importable (else the row says why not)
Columns: compile s (lower + compile), s/call (fastest of --steps after the first), peak GiB
(``device.memory_stats()["peak_bytes_in_use"]``; CPU: the process's max RSS; torch:
``torch.cuda.max_memory_allocated``). ``--small`` runs the same rows at toy size (demo config,
tiny PanoHead, tiny UNet) so that the script is exercised on a CPU
(tests/test_benchmarks_device.py).
Needs only jax, flax, optax, orbax-checkpoint, chex, numpy, ml_collections and the project.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import names_arg

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("step-fp32", "step-bf16", "panohead-fwd", "panohead-fwdbwd", "unet-fwd-fp32",
        "unet-fwd-bf16", "torch-unet-fp32", "torch-unet-fp16")


def _peak(default_rss: bool = True) -> tuple[float | None, str]:
    """Peak bytes of this process on its device (or max RSS on CPU) and which it is."""
    import resource

    import jax

    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and stats.get("peak_bytes_in_use") is not None:
        return float(stats["peak_bytes_in_use"]), "device"
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024), "RSS"


def step_row(dtype: str, small: bool, steps: int) -> dict:
    from benchmarks.stepping import time_step
    from benchmarks.train_step import build_step

    b = build_step("demo_sd" if small else "full", dtype)
    r = time_step(b["step"], b["state"], b["frozen"], steps=steps)
    return {"compile_s": r["compile_s"], "call_s": r["step_s"], "peak_bytes": r["peak_bytes"],
            "peak_kind": r["peak_kind"]}


def panohead_row(mode: str, small: bool, steps: int) -> dict:
    from benchmarks.panohead import measure

    r = measure("demo" if small else "full", mode, 1, steps)
    return {"compile_s": r["compile_s"], "call_s": r["time_s"], "peak_bytes": r["peak_bytes"],
            "peak_kind": r["peak_kind"]}


def unet_row(dtype: str, small: bool, steps: int) -> dict:
    """The UNet on the CFG batch of 2 (random weights, as ``benchmarks.teacher``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.teacher import SD15_UNET, _random_params
    from jaxhead.models import unet as unet_lib
    from jaxhead.training.demo import DEMO_UNET
    from jaxhead.utils.compile import jit

    dt = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[dtype]
    cfg = (unet_lib.UNetConfig(**DEMO_UNET) if small
           else unet_lib.UNetConfig.from_diffusers(SD15_UNET))
    unet = unet_lib.UNet2DConditionModel(cfg, dtype=dt)
    rng = np.random.default_rng(0)
    params = {"params": _random_params(unet_lib.expected_shapes(unet), dt, rng)}
    hw = 16 if small else 64
    x = jnp.asarray(rng.standard_normal((2, hw, hw, 4), dtype=np.float32))
    t = jnp.asarray([500, 500])
    ctx = jnp.asarray(rng.standard_normal((2, 77, cfg.cross_attention_dim), np.float32))
    t0 = time.perf_counter()
    compiled = jit(unet.apply).lower(params, x, t, ctx).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, x, t, ctx))
        times.append(time.perf_counter() - t0)
    peak, kind = _peak()
    return {"compile_s": compile_s, "call_s": min(times[1:]), "peak_bytes": peak,
            "peak_kind": kind}


def torch_unet_row(dtype: str, small: bool, steps: int) -> dict:
    """diffusers' UNet with PyTorch on CUDA (the reference implementation on the same GPU)."""
    try:
        import torch
        from diffusers import UNet2DConditionModel
    except ImportError as e:
        return {"skipped": f"not importable ({e.name})"}
    if not torch.cuda.is_available():
        return {"skipped": "torch has no CUDA device"}
    from benchmarks.teacher import SD15_UNET
    from jaxhead.training.demo import DEMO_UNET

    if small:
        kw = {k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_UNET.items()}
        kw["attention_head_dim"] = kw.pop("num_attention_heads")
        kw.pop("transformer_layers_per_block")
        kw["layers_per_block"] = kw["layers_per_block"][0]
    else:
        kw = dict(SD15_UNET)
    dt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    dev = torch.device("cuda")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**kw).to(dev, dt).eval()
    hw = 16 if small else 64
    x = torch.randn((2, 4, hw, hw), device=dev, dtype=dt)
    t = torch.tensor([500, 500], device=dev)
    ctx = torch.randn((2, 77, unet.config.cross_attention_dim), device=dev, dtype=dt)
    torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.no_grad():
        for _ in range(steps + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            unet(x, t, ctx)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return {"compile_s": None, "call_s": min(times[1:]), "first_s": times[0],
            "peak_bytes": float(torch.cuda.max_memory_allocated()), "peak_kind": "torch"}


def run_row(name: str, small: bool, steps: int) -> dict:
    kind, _, variant = name.rpartition("-")
    if name.startswith("step-"):
        return step_row({"fp32": "float32", "bf16": "bfloat16"}[variant], small, steps)
    if name.startswith("panohead-"):
        return panohead_row({"fwd": "forward", "fwdbwd": "forward+backward"}[variant], small,
                            steps)
    if name.startswith("unet-fwd-"):
        return unet_row(variant, small, steps)
    return torch_unet_row(variant, small, steps)


def device_line() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.device_kind} ({d.platform}, {jax.device_count()} device(s)), jax {jax.__version__}"


def build_parser() -> argparse.ArgumentParser:
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="toy sizes (runs on a CPU in seconds)")
    ap.add_argument("--rows", default="", help=f"comma-separated subset of {','.join(ROWS)}")
    ap.add_argument("--steps", type=int, default=2, help="timed calls per row (after one)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per row")
    ap.add_argument("--_row", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a._row:
        print(json.dumps(run_row(a._row, a.small, a.steps)))
        return 0
    rows = names_arg(ap, "--rows", a.rows, ROWS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    print(f"device: {device_line()}{'; --small (toy sizes)' if a.small else ''}", flush=True)
    print(f"{'row':<18}{'compile s':>10}{'s/call':>10}{'peak GiB':>10}  peak of")
    failed = 0
    for name in rows:
        cmd = [sys.executable, "-m", "benchmarks.device", "--_row", name, "--steps",
               str(a.steps)] + (["--small"] if a.small else [])
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                                 timeout=a.timeout, check=False)
        except subprocess.TimeoutExpired:
            print(f"{name:<18}timed out after {a.timeout:.0f} s", flush=True)
            failed += 1
            continue
        if out.returncode != 0:
            tail = (out.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name:<18}failed: {tail[:100]}", flush=True)
            failed += 1
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if "skipped" in r:
            print(f"{name:<18}skipped: {r['skipped']}", flush=True)
            continue
        comp = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        print(f"{name:<18}{comp:>10}{r['call_s']:>10.3f}{r['peak_bytes'] / 2.0 ** 30:>10.2f}"
              f"  {r['peak_kind']}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
