"""Cost of the evaluation protocol per identity, stage by stage, with full-size models (random
weights), and what the paper's 100 identities x 6 styles would cost.

    python -m benchmarks.evaluate [--stages render,edit-fp32,edit-bf16,inception,clip,...]

Each stage runs in its own subprocess (clean peak RSS). Stages:
  render     full PanoHead (released architecture): tri-grid once + 3 views (front, +-30 deg)
             through the SR to 512 px, one view per call: s per identity.
  edit-*     SDEdit of one 512 px render with SD 1.5's UNet / VAE (fp32 or bf16 UNet): the
             protocol's 25 of 50 DDIM steps would take ~25 x 26 s here, so the sampler runs
             ``--edit-steps`` steps (default 2) and the VAE encode + decode is timed alone;
             per identity = VAE + 25 x step (extrapolated, said in the table).
  inception  FID Inception-v3 features of 512 px images (batch 8), per image.
  clip       CLIP ViT-B/32 image embeddings (batch 8), per image.
  arcface    iresnet50 embeddings with the camera-derived crop (batch 8), per image.
  lpips      LPIPS(alex) at 512 px (batch 8), per pair (diversity: N (N - 1) / 2 pairs).
  stats      FID (through the samples) and KID on 100 x 2048 features, per generator.
Times are the min over ``--repeats`` calls after a compiling call (compile reported apart).
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
STAGES = ("render", "edit-fp32", "edit-bf16", "inception", "clip", "arcface", "lpips", "stats")
N_VIEWS, EDIT_STEPS_PAPER, N_IDS, N_STYLES = 3, 25, 100, 6


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(first call s (compile + run), min of ``repeats`` further calls s)."""
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return first, best


def _images(n: int, size: int = 512) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), np.uint8)


def w_render(spec: dict) -> dict:
    import jax.numpy as jnp

    from jaxhead.evaluation.protocol import _render_fns
    from jaxhead.models.panohead import PanoHead, PanoHeadConfig
    from jaxhead.models.panohead.demo import demo_params

    G = PanoHead(PanoHeadConfig())
    params = demo_params(G, 0)
    rep, render = _render_fns(G, "const", "white")
    ws = jnp.asarray(np.random.default_rng(0).standard_normal((1, G.num_ws, 512)), jnp.float32)
    from jaxhead.camera import make_camera

    cams = make_camera(jnp.asarray([0.0, -0.52, 0.52]), jnp.zeros(3), radius=G.camera_radius)

    def one_identity():
        planes = rep(params, ws)
        return [render(params, planes, ws, cams[i:i + 1]) for i in range(N_VIEWS)]

    first, best = _timed(one_identity, spec["repeats"])
    return {"first_s": first, "per_identity_s": best, "peak_rss_gb": _peak_gb(),
            "note": f"tri-grid + {N_VIEWS} views at 512 px"}


def w_edit(spec: dict) -> dict:
    import jax.numpy as jnp

    from benchmarks.teacher import _random_params
    from jaxhead import sampling as S
    from jaxhead.diffusion import NoiseSchedule
    from jaxhead.evaluation.demo import SD15_SCHEDULER
    from jaxhead.models import clip_text
    from jaxhead.models import unet as unet_lib
    from jaxhead.models import vae as vae_lib
    from jaxhead.teacher import Teacher
    from jaxhead.training.demo import DemoTokenizer
    from jaxhead.utils.compile import jit

    dtype = jnp.bfloat16 if spec["dtype"] == "bf16" else jnp.float32
    rng = np.random.default_rng(0)
    unet = unet_lib.UNet2DConditionModel(unet_lib.UNetConfig(), dtype=dtype)
    unet_params = _random_params(unet_lib.expected_shapes(unet), dtype, rng)
    vae = vae_lib.AutoencoderKL(vae_lib.VAEConfig())
    vae_params = _random_params(vae_lib.expected_shapes(vae), jnp.float32, rng)
    sd = S.StableDiffusion(Teacher(unet), vae, clip_text.CLIPTextModel(clip_text.CLIPTextConfig()),
                           DemoTokenizer(), NoiseSchedule.from_config(SD15_SCHEDULER))
    params = {"teacher": {"unet": unet_params, "controlnets": {}}, "vae": vae_params}
    text = jnp.asarray(rng.standard_normal((1, 77, 768)), jnp.float32)
    neg = jnp.asarray(rng.standard_normal((1, 77, 768)), jnp.float32)
    image = jnp.asarray(_images(1), jnp.float32) / 127.5 - 1
    k = spec["edit_steps"]
    noise = S.draw_noise(sd, S.seed_keys([0]), (64, 64), num_steps=50, start_index=50 - k,
                         posterior_sample=True)
    first, best = _timed(lambda: S.sample(sd, params, noise, text, neg, num_steps=50,
                                          start_index=50 - k, image=image).images,
                         spec["repeats"])

    @jit
    def vae_only(p, x, e):
        lat = S.encode_images(sd, p, x, e)
        return vae_lib.decode_latents(sd.vae, p["vae"], lat)

    vfirst, vbest = _timed(lambda: vae_only(params, image, noise.encode), spec["repeats"])
    step = (best - vbest) / k
    return {"first_s": first, "run_s": best, "steps_run": k, "vae_s": vbest,
            "vae_first_s": vfirst, "step_s": step,
            "per_identity_s": vbest + EDIT_STEPS_PAPER * step, "peak_rss_gb": _peak_gb(),
            "note": f"extrapolated: VAE + {EDIT_STEPS_PAPER} x step from {k} steps"}


def w_inception(spec: dict) -> dict:
    from jaxhead.evaluation.demo import demo_network
    from jaxhead.metrics.inception import features_in_batches

    p = demo_network("inception")
    x = _images(8)
    first, best = _timed(lambda: features_in_batches(p, x, batch_size=8), spec["repeats"])
    return {"first_s": first, "per_image_s": best / 8, "peak_rss_gb": _peak_gb()}


def w_clip(spec: dict) -> dict:
    from jaxhead.evaluation.demo import demo_network
    from jaxhead.evaluation.protocol import clip_embeddings

    p, _ = demo_network("clip", full=True)
    x = _images(8)
    first, best = _timed(lambda: clip_embeddings(p, x, 8), spec["repeats"])
    return {"first_s": first, "per_image_s": best / 8, "peak_rss_gb": _peak_gb()}


def w_arcface(spec: dict) -> dict:
    import jax.numpy as jnp

    from jaxhead.camera import make_camera
    from jaxhead.evaluation.demo import demo_network
    from jaxhead.evaluation.protocol import arcface_embeddings

    p = demo_network("arcface", full=True)
    x = _images(8)
    cams = np.asarray(make_camera(jnp.linspace(-0.5, 0.5, 8), jnp.zeros(8)))
    first, best = _timed(lambda: arcface_embeddings(p, x, cams, 8), spec["repeats"])
    return {"first_s": first, "per_image_s": best / 8, "peak_rss_gb": _peak_gb()}


def w_lpips(spec: dict) -> dict:
    import jax.numpy as jnp

    from jaxhead.evaluation.demo import demo_network
    from jaxhead.models.lpips import lpips
    from jaxhead.utils.compile import jit

    p = demo_network("lpips")
    x = jnp.asarray(_images(16), jnp.float32) / 127.5 - 1
    f = jit(lpips)
    first, best = _timed(lambda: f(p, x[:8], x[8:]), spec["repeats"])
    return {"first_s": first, "per_pair_s": best / 8, "peak_rss_gb": _peak_gb()}


def w_stats(spec: dict) -> dict:
    from jaxhead.metrics.fid import fid_low_rank, kid

    rng = np.random.default_rng(0)
    f1, f2 = np.abs(rng.standard_normal((2, N_IDS, 2048)))
    t = time.perf_counter()
    for _ in range(spec["repeats"]):
        fid_low_rank(f1, f2)
        kid(f1, f2, num_subsets=100, subset_size=N_IDS, seed=0)
    return {"per_generator_s": (time.perf_counter() - t) / spec["repeats"],
            "peak_rss_gb": _peak_gb()}


WORKERS = {"render": w_render, "edit-fp32": w_edit, "edit-bf16": w_edit,
           "inception": w_inception, "clip": w_clip, "arcface": w_arcface, "lpips": w_lpips,
           "stats": w_stats}


def run_stage(name: str, repeats: int, edit_steps: int) -> dict:
    spec = {"stage": name, "repeats": repeats, "edit_steps": edit_steps,
            "dtype": "bf16" if name.endswith("bf16") else "fp32"}
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.evaluate", "--worker",
                           json.dumps(spec)], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1],
                "wall_s": time.perf_counter() - t0}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    return res


def per_identity(results: dict) -> dict[str, float]:
    """Seconds per identity and generator of each metric stage (one edited view, 3 views)."""
    out = {}
    if "inception" in results:  # the edit and the generator's edited view
        out["FID/KID features"] = 2 * results["inception"]["per_image_s"]
    if "clip" in results:
        out["CLIP / CLIP-S"] = 2 * results["clip"]["per_image_s"]
    if "arcface" in results:  # generator + reference, every view
        out["ID (ArcFace)"] = 2 * N_VIEWS * results["arcface"]["per_image_s"]
    if "lpips" in results:  # (N - 1) / 2 pairs per identity
        out["diversity (LPIPS)"] = (N_IDS - 1) / 2 * results["lpips"]["per_pair_s"]
    return out


def report(results: dict) -> str:
    rows = ["| stage | s per identity | first call s (compile + run) | peak RSS GB | note |",
            "|---|---|---|---|---|"]
    for name in ("render", "edit-fp32", "edit-bf16"):
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            rows.append(f"| {name} | error: {r['error']} | | | |")
            continue
        note = r.get("note", "")
        if name.startswith("edit"):
            note += f" (step {r['step_s']:.1f} s, VAE enc+dec {r['vae_s']:.1f} s)"
        rows.append(f"| {name} | {r['per_identity_s']:.1f} | {r['first_s']:.1f} | "
                    f"{r['peak_rss_gb']:.1f} | {note} |")
    metric = per_identity({k: v for k, v in results.items() if "error" not in v})
    for name, s in metric.items():
        src = {"FID/KID features": "inception", "CLIP / CLIP-S": "clip", "ID (ArcFace)":
               "arcface", "diversity (LPIPS)": "lpips"}[name]
        r = results[src]
        rows.append(f"| {name} | {s:.2f} | {r['first_s']:.1f} | {r['peak_rss_gb']:.1f} | per "
                    "generator |")
    if "stats" in results and "error" not in results["stats"]:
        rows.append(f"| FID + KID math (100 x 2048) | {results['stats']['per_generator_s']:.2f} "
                    f"per generator | | {results['stats']['peak_rss_gb']:.1f} | |")
    text = "\n".join(rows)
    if all(k in results and "error" not in results[k] for k in ("render", "edit-fp32")):
        render = results["render"]["per_identity_s"]
        edit = results["edit-fp32"]["per_identity_s"]
        m = sum(metric.values())
        # per style: its stylized generator's renders and metrics, its edits; frozen renders
        # and their metrics (reference row) once per style
        total = N_IDS * (render * (1 + N_STYLES) + N_STYLES * (edit + 2 * m))
        edits = N_IDS * N_STYLES * edit
        text += (f"\n\n{N_IDS} identities x {N_STYLES} styles (renders of the frozen and 6 "
                 f"stylized generators, 6 x {N_IDS} SD edits, metrics of 2 rows per style): "
                 f"{total / 3600:.1f} h on this CPU, of which the SD edits {edits / 3600:.1f} h "
                 f"({100 * edits / total:.0f} %); an edit costs {edit / render:.0f}x a render "
                 f"and {edit / max(m, 1e-9):.0f}x all metrics of an identity.")
        if "edit-bf16" in results and "error" not in results["edit-bf16"]:
            b = results["edit-bf16"]["per_identity_s"]
            text += (f" bf16 UNet: {b:.0f} s per edit vs {edit:.0f} s fp32 "
                     f"({b / edit:.2f}x; emulated bf16 on this CPU, meant for GPUs).")
    return text


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--edit-steps", type=int, default=2, help="DDIM steps timed for the edit")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.worker:
        spec = json.loads(a.worker)
        print(json.dumps(WORKERS[spec["stage"]](spec)))
        return 0
    results = {}
    for name in names_arg(ap, "--stages", a.stages, STAGES):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_stage(name, a.repeats, a.edit_steps)
        print(f"  {json.dumps(results[name])}", file=sys.stderr, flush=True)
    print(f"Evaluation cost, full-size models with random weights, CPU ({os.cpu_count()} cores)"
          "\n")
    print(report(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
