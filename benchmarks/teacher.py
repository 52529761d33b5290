"""Benchmark of the SD 1.5 teacher call (UNet + ControlNet, CFG) with random weights.

    python -m benchmarks.teacher [--repeats 2] [--only jax-fp32-b1,...] [--cpu-conv eigen|ynnpack]

Each configuration runs in its own subprocess so its peak RSS (``ru_maxrss``: parameters +
activations + compiler) is clean. Reported per configuration: compile time of the jitted
``Teacher.eps`` (trace + XLA compile), wall time of one call (min over repeats), peak RSS.

Batches (latents 64x64 = one 512 px image each; CFG doubles the UNet/ControlNet batch):
  B=1  one image (a single view, or the 2x2 grid image: same cost), depth ControlNet;
  B=2  the paper's step: 2x2 grid with the depth ControlNet + a single view with the edge
       ControlNet (two different ControlNets in one call).
The reference is diffusers' PyTorch UNet (and ControlNet + UNet) on the same CFG batch of 2
(torch is a bench/test extra; jaxhead itself never imports it). ``pair-unet-fp32`` runs the same
UNet (torch weights converted) in torch and JAX in one process with the calls alternated: the
robust ratio on a shared machine. ``--cpu-conv ynnpack`` compiles with jaxlib's default (YNNPACK
convolutions) instead of jaxhead's (``jaxhead.utils.compile``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import names_arg

ROOT = Path(__file__).resolve().parents[1]
SD15_UNET = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}
SD15_CONTROLNET = {"cross_attention_dim": 768, "attention_head_dim": 8}  # + diffusers defaults

CONFIGS = {
    "jax-fp32-b1": dict(kind="jax", dtype="fp32", batch=1, attention="auto", unet_only=True),
    "jax-fp32-b1-dense": dict(kind="jax", dtype="fp32", batch=1, attention="dense"),
    "jax-fp32-b2": dict(kind="jax", dtype="fp32", batch=2, attention="auto"),
    "jax-bf16-b1": dict(kind="jax", dtype="bf16", batch=1, attention="auto"),
    "jax-bf16-b2": dict(kind="jax", dtype="bf16", batch=2, attention="auto"),
    "torch-fp32": dict(kind="torch"),
    "pair-unet-fp32": dict(kind="pair"),
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _random_params(shapes, dtype, rng: np.random.Generator):
    """Random tree shaped like ``shapes``: kernels ~ N(0, 1/fan_in), norm scales 1, biases small
    (finite activations through 860 M parameters; values do not change the timing)."""
    import jax
    import jax.numpy as jnp

    def leaf(path, s):
        name = path[-1].key
        if name == "scale":
            a = np.ones(s.shape, np.float32)
        elif name == "bias":
            a = 0.01 * rng.standard_normal(s.shape, dtype=np.float32)
        else:
            fan_in = int(np.prod(s.shape[:-1])) or 1
            a = rng.standard_normal(s.shape, dtype=np.float32) / np.sqrt(fan_in)
        return jnp.asarray(a, dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def jax_worker(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxhead.models import controlnet as cn_lib
    from jaxhead.models import unet as unet_lib
    from jaxhead.teacher import Teacher
    from jaxhead.utils.compile import compiler_options

    dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[spec["dtype"]]
    b, impl = spec["batch"], spec["attention"]
    unet = unet_lib.UNet2DConditionModel(unet_lib.UNetConfig.from_diffusers(SD15_UNET),
                                         dtype=dtype, attention_impl=impl)
    cn_cfg = cn_lib.ControlNetConfig.from_diffusers(SD15_CONTROLNET)
    names = ("depth", "edge")[:b]
    cns = tuple((n, cn_lib.ControlNetModel(cn_cfg, dtype=dtype, attention_impl=impl))
                for n in names)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    params = {"unet": _random_params(unet_lib.expected_shapes(unet), dtype, rng),
              "controlnets": {n: _random_params(cn_lib.expected_shapes(m), dtype, rng)
                              for n, m in cns}}
    init_s = time.perf_counter() - t0
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    teacher = Teacher(unet, cns)
    inp = dict(noisy_latents=rng.standard_normal((b, 64, 64, 4), dtype=np.float32),
               t=np.array([500] * b), text_emb=rng.standard_normal((b, 77, 768), np.float32),
               neg_emb=rng.standard_normal((1, 77, 768), np.float32),
               control=rng.uniform(0, 1, (b, 512, 512, 3)).astype(np.float32))
    opts = compiler_options(cpu_conv=spec["cpu_conv"])
    fn = jax.jit(teacher.eps, static_argnames=("controlnet",), compiler_options=opts)
    t0 = time.perf_counter()
    compiled = fn.lower(params, **inp, controlnet=names).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(params, **inp))
        times.append(time.perf_counter() - t0)
    assert np.isfinite(np.asarray(out.eps)).all()
    res = dict(params_m=n_params / 1e6, init_s=init_s, compile_s=compile_s, call_s=min(times),
               calls_s=times)
    if spec.get("unet_only"):  # the UNet alone on the CFG batch, for the UNet-vs-UNet ratio
        x2 = jnp.concatenate([inp["noisy_latents"]] * 2)
        ctx2 = jnp.concatenate([jnp.broadcast_to(inp["neg_emb"], inp["text_emb"].shape),
                                inp["text_emb"]])
        t2 = np.concatenate([inp["t"]] * 2)
        f = jax.jit(unet.apply, compiler_options=opts)
        t0 = time.perf_counter()
        c = f.lower({"params": params["unet"]}, x2, t2, ctx2).compile()
        res["unet_compile_s"] = time.perf_counter() - t0
        ut = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            jax.block_until_ready(c({"params": params["unet"]}, x2, t2, ctx2))
            ut.append(time.perf_counter() - t0)
        res["unet_call_s"] = min(ut)
    res["peak_rss_mb"] = _peak_mb()
    return res


def torch_worker(spec: dict) -> dict:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    cn = ControlNetModel.from_unet(unet).eval()
    init_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 4, 64, 64), generator=g)
    t = torch.tensor([500, 500])
    ctx = torch.randn((2, 77, 768), generator=g)
    cond = torch.rand((2, 3, 512, 512), generator=g)
    unet_t, full_t = [], []
    with torch.no_grad():
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            unet(x, t, ctx)
            unet_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            d, m = cn(x, t, ctx, cond, return_dict=False)
            unet(x, t, ctx, down_block_additional_residuals=d, mid_block_additional_residual=m)
            full_t.append(time.perf_counter() - t0)
    return dict(init_s=init_s, unet_call_s=min(unet_t), call_s=min(full_t),
                peak_rss_mb=_peak_mb(), torch_version=torch.__version__)


def pair_worker(spec: dict) -> dict:
    """The same UNet (torch weights converted to jaxhead) on the same CFG batch of 2, torch and
    JAX calls alternated so that machine-load drift hits both alike."""
    import jax
    import torch
    from diffusers import UNet2DConditionModel

    from jaxhead.models import unet as unet_lib
    from jaxhead.utils.compile import compiler_options

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    tu = UNet2DConditionModel(**SD15_UNET).eval()
    cfg = dict(tu.config)
    module = unet_lib.UNet2DConditionModel(unet_lib.UNetConfig.from_diffusers(cfg))
    params = unet_lib.convert({k: v.numpy() for k, v in tu.state_dict().items()}, cfg)
    params = jax.tree.map(jax.numpy.asarray, params)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 64, 64), dtype=np.float32)
    t = np.array([500, 500])
    ctx = rng.standard_normal((2, 77, 768), dtype=np.float32)
    xj = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    f = jax.jit(module.apply, compiler_options=compiler_options(cpu_conv=spec["cpu_conv"]))
    t0 = time.perf_counter()
    compiled = f.lower({"params": params}, xj, t, ctx).compile()
    compile_s = time.perf_counter() - t0
    tj, tt = [], []
    with torch.no_grad():
        xt, tt_, ct = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)
        for _ in range(spec["repeats"] + 1):  # the first round is a warm-up
            t0 = time.perf_counter()
            ref = tu(xt, tt_, ct).sample.numpy()
            tt.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = np.asarray(compiled({"params": params}, xj, t, ctx))
            tj.append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(tj[1:], tt[1:], strict=True)]
    err = float(np.abs(out.transpose(0, 3, 1, 2) - ref).max())
    return dict(compile_s=compile_s, call_s=min(tj[1:]), unet_call_s=min(tj[1:]),
                torch_unet_call_s=min(tt[1:]), ratios=ratios, max_abs_err=err,
                peak_rss_mb=_peak_mb())


def run_config(name: str, repeats: int, cpu_conv: str = "eigen") -> dict:
    spec = {**CONFIGS[name], "repeats": repeats, "cpu_conv": cpu_conv}
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"],
                "wall_s": time.perf_counter() - t0}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    return res


def table(results: dict[str, dict]) -> str:
    torch_res = results.get("torch-fp32", {})
    rows = ["| configuration | compile s | teacher call s | UNet-only call s | peak RSS GB |"
            " call / torch CN+UNet | UNet / torch UNet |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | error: {r['error']} | | | | | |")
            continue
        ratio = uratio = ""
        if name.startswith("pair"):
            uratio = f"{sorted(r['ratios'])[len(r['ratios']) // 2]:.2f} (paired)"
        elif "-b1" in name and "call_s" in torch_res:  # same CFG batch of 2 as torch
            ratio = f"{r['call_s'] / torch_res['call_s']:.2f}"
            if "unet_call_s" in r:
                uratio = f"{r['unet_call_s'] / torch_res['unet_call_s']:.2f}"
        comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        unet = f"{r['unet_call_s']:.2f}" if "unet_call_s" in r else "-"
        rows.append(f"| {name} | {comp} | {r['call_s']:.2f} | {unet} | "
                    f"{r['peak_rss_mb'] / 1024:.1f} | {ratio} | {uratio} |")
    return "\n".join(rows)


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per configuration")
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--cpu-conv", default="eigen", choices=("eigen", "ynnpack"),
                    help="CPU convolutions: XLA's (jaxhead's default) or YNNPACK (jaxlib's)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.worker:
        spec = json.loads(a.worker)
        import jax

        from jaxhead.ops.platform import target

        with target(jax.default_backend()):  # traced for this platform, as jaxhead's jit does
            res = {"jax": jax_worker, "torch": torch_worker,
                   "pair": pair_worker}[spec["kind"]](spec)
        print(json.dumps(res))
        return 0
    names = names_arg(ap, "--only", a.only, CONFIGS)
    results = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_config(name, a.repeats, a.cpu_conv)
        print(f"  {json.dumps(results[name])}", file=sys.stderr, flush=True)
    print(f"SD 1.5 teacher, random weights, CPU ({os.cpu_count()} cores); 64x64 latents; "
          f"CFG batch = 2 x B; times are the min over repeats; {a.cpu_conv} convolutions\n")
    print(table(results))
    if "pair-unet-fp32" in results and "torch_unet_call_s" in results["pair-unet-fp32"]:
        r = results["pair-unet-fp32"]
        print(f"\npaired UNet (same weights and input, calls alternated): torch "
              f"{r['torch_unet_call_s']:.2f}s, jax {r['unet_call_s']:.2f}s, max-abs diff "
              f"{r['max_abs_err']:.2g}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
