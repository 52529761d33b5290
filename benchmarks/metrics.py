"""Benchmark of the metric networks (random weights): the FID Inception-v3 feature extractor,
CLIP ViT-B/32 and ViT-L/14 image embeddings, the ArcFace identity networks (iresnet50,
IR-SE50), and the FID/KID math.

    python -m benchmarks.metrics [--repeats 3] [--only jax-b8,torch-b8,...] [--json out.json]

Each configuration runs in its own subprocess so its peak RSS (``ru_maxrss``: weights +
activations + compiler) is its own. JAX programs are compiled as jaxhead compiles them
(``jaxhead.utils.compile.jit``). Inception rows: full-size network (23.9 M parameters) on a
batch of 299 px images (no resize), fp32; JAX = ``jit(inception_features)``, compile = lower +
compile; torch = the plain-torch reference of tests/inception_testlib.py (pytorch-fid's
network; torch is a test/bench extra), "compile" = its first (warm-up) call. CLIP rows: the
whole CLIPModel's weights in memory (both towers), image embeddings of a batch of preprocessed
224 px pixel values (image tower + ``visual_projection``), fp32; JAX =
``jit(pixel_embeds)``, torch = transformers' ``CLIPModel`` (its own random init).
s/batch = median of --repeats calls after one warm-up call. ``fid-kid`` row: ``fid`` and
``kid`` (defaults: 100 subsets of 1000) on two sets of 2000 random 2048-d features.
``pair-b8`` / ``clip-b32-pair`` run both frameworks in one process on the same weights with
the calls alternated: the robust ratio on a shared machine. ArcFace rows: full-size networks
on a batch of aligned 112 px faces in [-1, 1] (the network only; the crop is not timed), fp32;
``arcface-*`` is insightface's iresnet50 (43.6 M parameters), JAX = ``jit(embed)`` against
onnxruntime (CPU provider, all cores) running a random-weight iresnet50 exported by
``torch.onnx.export`` (the plain-torch reference of tests/arcface_testlib.py, exported once per
run in its own process, as insightface's ``w600k_r50.onnx`` was); ``irse-*`` is the IR-SE50
of pSp (43.8 M), JAX against that plain-torch reference. ``*-pair-b8`` rows convert the
reference's weights (the ONNX file through ``convert_weights.arcface``) and alternate calls.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import names_arg

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "jax-b8": dict(kind="jax", batch=8),
    "torch-b8": dict(kind="torch", batch=8),
    "jax-b32": dict(kind="jax", batch=32),
    "torch-b32": dict(kind="torch", batch=32),
    "pair-b8": dict(kind="pair", batch=8),
    "fid-kid": dict(kind="math", n=2000),
    "clip-b32-jax": dict(kind="clip-jax", model="openai/clip-vit-base-patch32", batch=8),
    "clip-b32-torch": dict(kind="clip-torch", model="openai/clip-vit-base-patch32", batch=8),
    "clip-b32-pair": dict(kind="clip-pair", model="openai/clip-vit-base-patch32", batch=8),
    "clip-l14-jax": dict(kind="clip-jax", model="openai/clip-vit-large-patch14", batch=8),
    "clip-l14-torch": dict(kind="clip-torch", model="openai/clip-vit-large-patch14", batch=8),
    "arcface-jax-b8": dict(kind="face-jax", arch="iresnet", batch=8),
    "arcface-ort-b8": dict(kind="face-ort", arch="iresnet", batch=8),
    "arcface-jax-b32": dict(kind="face-jax", arch="iresnet", batch=32),
    "arcface-ort-b32": dict(kind="face-ort", arch="iresnet", batch=32),
    "arcface-pair-b8": dict(kind="face-ort-pair", arch="iresnet", batch=8),
    "irse-jax-b8": dict(kind="face-jax", arch="ir_se", batch=8),
    "irse-torch-b8": dict(kind="face-torch", arch="ir_se", batch=8),
    "irse-jax-b32": dict(kind="face-jax", arch="ir_se", batch=32),
    "irse-torch-b32": dict(kind="face-torch", arch="ir_se", batch=32),
    "irse-pair-b8": dict(kind="face-torch-pair", arch="ir_se", batch=8),
}
ONNX_KINDS = ("face-ort", "face-ort-pair")  # rows that need the exported iresnet50


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _images(batch: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (batch, 299, 299, 3)).astype(np.float32)


def _timed(call, repeats: int) -> tuple[float, list[float]]:
    """(first call s, timed calls s) of ``call()`` after which results are blocked on."""
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return first, times


def _jax_row(fn, params, x, repeats: int) -> dict:
    """Compile ``fn(params, x)`` as jaxhead does (``jaxhead.utils.compile.jit``) and time it."""
    import jax

    from jaxhead.utils.compile import jit

    t0 = time.perf_counter()
    compiled = jit(fn).lower(params, x).compile()
    compile_s = time.perf_counter() - t0
    _, times = _timed(lambda: jax.block_until_ready(compiled(params, x)), repeats)
    assert np.isfinite(np.asarray(compiled(params, x))).all()
    return dict(compile_s=compile_s, call_s=statistics.median(times), calls_s=times,
                peak_rss_mb=_peak_mb())


def _paired_row(fn, params, x, ref, ref_input, repeats: int) -> dict:
    """``fn(params, x)`` (compiled as jaxhead does) against ``ref(ref_input)`` (a NumPy
    result), in one process with the calls alternated; the first round is a warm-up."""
    from jaxhead.utils.compile import jit

    compiled = jit(fn).lower(params, x).compile()
    tj, tt = [], []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        r = ref(ref_input)
        tt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = np.asarray(compiled(params, x))
        tj.append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(tj[1:], tt[1:], strict=True)]
    err = float(np.abs(out - r).max())
    return dict(call_s=statistics.median(tj[1:]), torch_call_s=statistics.median(tt[1:]),
                ratios=ratios, max_abs_err=err, rel_err=err / float(np.abs(r).max()),
                peak_rss_mb=_peak_mb())


def jax_worker(spec: dict) -> dict:
    import jax

    from jaxhead.metrics import inception as inc

    params = inc.random_params(jax.random.key(0))
    return _jax_row(inc.inception_features, params, _images(spec["batch"]), spec["repeats"])


def torch_worker(spec: dict) -> dict:
    import torch

    from tests.inception_testlib import seeded_state_dict, torch_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = torch_model(seeded_state_dict())
    x = torch.from_numpy(_images(spec["batch"]).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        first_s, times = _timed(lambda: model(x), spec["repeats"])
        assert torch.isfinite(model(x)).all()
    return dict(compile_s=first_s, call_s=statistics.median(times), calls_s=times,
                peak_rss_mb=_peak_mb(), torch_version=torch.__version__)


def pair_worker(spec: dict) -> dict:
    """The same weights (the torch reference's, converted) in torch and JAX in one process,
    calls alternated so that load from other processes hits both alike."""
    import jax
    import torch

    from convert_weights.inception import convert_state_dict
    from jaxhead.metrics import inception as inc
    from tests.inception_testlib import seeded_state_dict, torch_model

    torch.set_num_threads(os.cpu_count() or 1)
    state = seeded_state_dict()
    model = torch_model(state)
    params = jax.tree.map(jax.numpy.asarray, convert_state_dict(state))
    x = _images(spec["batch"])
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def ref(a):
        with torch.no_grad():
            return model(a).numpy()
    return _paired_row(inc.inception_features, params, x, ref, xt, spec["repeats"])


def math_worker(spec: dict) -> dict:
    from jaxhead.metrics.fid import fid, kid

    rng = np.random.default_rng(0)
    n = spec["n"]
    f1 = np.maximum(rng.standard_normal((n, 2048)), 0).astype(np.float32)  # ReLU-like
    f2 = np.maximum(rng.standard_normal((n, 2048)) + 0.05, 0).astype(np.float32)
    t0 = time.perf_counter()
    d = fid(f1, f2)
    fid_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    k = kid(f1, f2, seed=0)
    kid_s = time.perf_counter() - t0
    return dict(fid_s=fid_s, kid_s=kid_s, fid=d, kid=k, peak_rss_mb=_peak_mb())


def _pixels(batch: int) -> np.ndarray:
    """CLIP-normalised pixel values, NHWC."""
    return np.random.default_rng(0).standard_normal((batch, 224, 224, 3)).astype(np.float32)


def _torch_clip(name: str):
    import torch
    import transformers

    from jaxhead.models.clip import PRESETS

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(**PRESETS[name].to_transformers())
    model = transformers.CLIPModel(cfg).eval()

    def embed(x_nchw):
        return model.visual_projection(model.vision_model(x_nchw).pooler_output)

    return model, embed


def clip_jax_worker(spec: dict) -> dict:
    import jax

    from jaxhead.metrics.clip import pixel_embeds
    from jaxhead.models.clip import PRESETS, random_params

    params = random_params(PRESETS[spec["model"]], jax.random.key(0))
    return _jax_row(pixel_embeds, params, _pixels(spec["batch"]), spec["repeats"])


def clip_torch_worker(spec: dict) -> dict:
    import torch

    _, embed = _torch_clip(spec["model"])
    x = torch.from_numpy(_pixels(spec["batch"]).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        first_s, times = _timed(lambda: embed(x), spec["repeats"])
        assert torch.isfinite(embed(x)).all()
    return dict(compile_s=first_s, call_s=statistics.median(times), calls_s=times,
                peak_rss_mb=_peak_mb(), torch_version=torch.__version__)


def clip_pair_worker(spec: dict) -> dict:
    """transformers' random CLIP converted to JAX; both in one process, calls alternated."""
    import jax
    import torch

    from jaxhead.metrics.clip import pixel_embeds
    from jaxhead.models.clip import PRESETS, CLIPParams, convert

    model, embed = _torch_clip(spec["model"])
    cfg = PRESETS[spec["model"]]
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = CLIPParams(config=cfg, weights=jax.tree.map(jax.numpy.asarray, convert(state, cfg)))
    del state
    x = _pixels(spec["batch"])
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def ref(a):
        with torch.no_grad():
            return embed(a).numpy()
    return _paired_row(pixel_embeds, params, x, ref, xt, spec["repeats"])


def _faces(batch: int) -> np.ndarray:
    """Aligned faces as the networks take them: NHWC 112 px in [-1, 1]."""
    return np.random.default_rng(0).uniform(-1, 1, (batch, 112, 112, 3)).astype(np.float32)


def face_export_worker(spec: dict) -> dict:
    """Write the random-weight full-size iresnet50 as ONNX (torch.onnx.export, eval mode)."""
    import warnings

    from tests.arcface_testlib import FULL, IResNet, export_onnx, randomize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Path(spec["path"]).write_bytes(export_onnx(randomize(IResNet(**FULL), 0)))
    return {"path": spec["path"]}


def _ort_session(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x_nchw: sess.run(None, {name: x_nchw})[0]


def _torch_irse():
    import torch

    from tests.arcface_testlib import FULL, IRSEBackbone, randomize

    torch.set_num_threads(os.cpu_count() or 1)
    return randomize(IRSEBackbone(**FULL), 0)


def face_jax_worker(spec: dict) -> dict:

    from jaxhead.models.arcface import IR_SE50, IRESNET50, embed, random_params

    params = random_params(IRESNET50 if spec["arch"] == "iresnet" else IR_SE50, 0)
    return _jax_row(embed, params, _faces(spec["batch"]), spec["repeats"])


def face_ref_worker(spec: dict) -> dict:
    """onnxruntime on the exported iresnet50, or the plain-torch IR-SE50."""
    x = np.ascontiguousarray(_faces(spec["batch"]).transpose(0, 3, 1, 2))
    if spec["kind"] == "face-ort":
        import onnxruntime as ort

        run = _ort_session(spec["onnx"])
        version = {"onnxruntime_version": ort.__version__}
    else:
        import torch

        model, xt = _torch_irse(), torch.from_numpy(x)
        version = {"torch_version": torch.__version__}

        def run(_):
            with torch.no_grad():
                return model(xt).numpy()
    first, times = _timed(lambda: run(x), spec["repeats"])
    assert np.isfinite(run(x)).all()
    return dict(compile_s=first, call_s=statistics.median(times), calls_s=times,
                peak_rss_mb=_peak_mb(), **version)


def face_pair_worker(spec: dict) -> dict:
    """The reference's weights converted to JAX; both in one process, calls alternated."""
    import jax

    from convert_weights import arcface as conv
    from jaxhead.models.arcface import ArcFaceParams, embed

    x = _faces(spec["batch"])
    xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if spec["kind"] == "face-ort-pair":
        import onnx

        ref = _ort_session(spec["onnx"])
        cfg, w = conv.convert_onnx(onnx.load(spec["onnx"]))
    else:
        import torch

        from tests.arcface_testlib import state_dict_numpy

        model = _torch_irse()
        cfg, w = conv.convert_irse_state(state_dict_numpy(model))

        def ref(a):
            with torch.no_grad():
                return model(torch.from_numpy(a)).numpy()
    params = ArcFaceParams(cfg, jax.tree.map(jax.numpy.asarray, w))
    return _paired_row(embed, params, x, ref, xc, spec["repeats"])


def run_config(name: str, repeats: int, extra: dict | None = None) -> dict:
    return run_worker({**CONFIGS[name], "repeats": repeats, **(extra or {})})


def run_worker(spec: dict) -> dict:
    """``spec`` in a fresh worker process -> its result dict (or ``{"error": last line}``)."""
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "benchmarks.metrics", "--worker",
                           json.dumps(spec)], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict]) -> str:
    rows = ["| configuration | compile / first call s | s per batch | images/s | peak RSS GB |"
            " vs torch / onnxruntime |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        spec = CONFIGS[name]
        if "error" in r:
            rows.append(f"| {name} | error: {r['error']} | | | | |")
            continue
        if spec["kind"] == "math":
            rows.append(f"| {name} (N={spec['n']} x 2, D=2048) | - | fid {r['fid_s']:.2f} s, "
                        f"kid {r['kid_s']:.2f} s | - | {r['peak_rss_mb'] / 1024:.2f} | |")
            continue
        if spec["kind"].endswith("pair"):
            ratio = statistics.median(r["ratios"])
            ref = "ort" if spec["kind"] == "face-ort-pair" else "torch"
            rows.append(f"| {name} (same weights, alternated) | - | jax {r['call_s']:.3f}, "
                        f"{ref} {r['torch_call_s']:.3f} | {spec['batch'] / r['call_s']:.1f} | "
                        f"{r['peak_rss_mb'] / 1024:.2f} | {ratio:.2f}x time (paired) |")
            continue
        ratio = ""
        for ref in ("torch", "ort"):
            other = results.get(name.replace("jax", ref), {})
            if spec["kind"].endswith("jax") and "call_s" in other:
                ratio = f"{r['call_s'] / other['call_s']:.2f}x time"
        rows.append(f"| {name} | {r['compile_s']:.2f} | {r['call_s']:.3f} | "
                    f"{spec['batch'] / r['call_s']:.1f} | {r['peak_rss_mb'] / 1024:.2f} | "
                    f"{ratio} |")
    return "\n".join(rows)


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per configuration")
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.worker:
        spec = json.loads(a.worker)
        workers = {"jax": jax_worker, "torch": torch_worker, "pair": pair_worker,
                   "math": math_worker, "clip-jax": clip_jax_worker,
                   "clip-torch": clip_torch_worker, "clip-pair": clip_pair_worker,
                   "face-export": face_export_worker, "face-jax": face_jax_worker,
                   "face-ort": face_ref_worker, "face-torch": face_ref_worker,
                   "face-ort-pair": face_pair_worker, "face-torch-pair": face_pair_worker}
        res = workers[spec["kind"]](spec)
        print(json.dumps(res))
        return 0
    names = names_arg(ap, "--only", a.only, CONFIGS)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        extra = {}
        if any(CONFIGS[n]["kind"] in ONNX_KINDS for n in names):
            print("exporting a random-weight iresnet50 to ONNX ...", file=sys.stderr, flush=True)
            made = run_worker({"kind": "face-export", "path": str(Path(tmp) / "iresnet50.onnx")})
            extra = {"onnx": made.get("path", "")}
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results[name] = run_config(name, a.repeats, extra)
            print(f"  {json.dumps(results[name])}", file=sys.stderr, flush=True)
    print(f"Random weights, fp32; Inception at 299 px, CLIP image embeddings at 224 px, ArcFace "
          f"at 112 px; CPU "
          f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}); s per batch = "
          f"median of {a.repeats}\n")
    print(table(results))
    for name in ("pair-b8", "clip-b32-pair", "arcface-pair-b8", "irse-pair-b8"):
        if "max_abs_err" in results.get(name, {}):
            r = results[name]
            print(f"\n{name} outputs: max-abs diff {r['max_abs_err']:.2g} "
                  f"({r['rel_err']:.2g} of the output scale)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
