"""Invert photos into PanoHead's W+ (and optionally tune the generator around them, PTI).

    python -m jaxhead.invert --generator checkpoints/panohead --images dataset/ --out out/inv

``--images``: a folder in PanoHead's preprocessed layout (crops + ``dataset.json``) or one
image (camera from ``--yaw`` / ``--pitch``, frontal by default). Per image ``<stem>``:
``<stem>.npz`` (``w`` [1, num_ws, 512] float32, the official ``projected_w.npz`` layout),
``<stem>.json`` (final MSE, LPIPS, PSNR, steps, seconds, cameras), ``<stem>_compare.png``
(target | reconstruction | reconstruction at +60 / -60 degrees yaw | from the back) and, with
``--pti-steps N``, ``<stem>_pti/`` (the tuned generator in ``load_panohead``'s format).
Identities are processed ``--batch`` at a time (split over the local devices); ``--chunk K``
projects them ``K`` at a time in sequence (same result, memory of ``K`` identities).

A stem whose ``.npz`` exists and records this run's settings (steps, PTI steps, generator,
perceptual network, camera, near plane, seed) is skipped, so an interrupted run resumes; one
made with other settings is redone (the log names the changed settings). Any other leftover
output of a stem stops the run with its name. A non-finite result is never written: its stem is
reported and the run exits 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from jaxhead.camera import make_camera
from jaxhead.errors import ArgumentParser, DataError, UsageError, run_cli
from jaxhead.evaluation.cache import directory_digest
from jaxhead.inversion_data import Target, frontal_camera, list_targets, load_image
from jaxhead.inversion_outputs import outputs, pending, run_settings, stem_settings, write_npz
from jaxhead.models.lpips_vgg import load_lpips_vgg
from jaxhead.models.panohead import PanoHead, load_panohead, save_panohead
from jaxhead.projector import Projector, ProjectorConfig, Targets
from jaxhead.render import check_writable
from jaxhead.utils.compile import jit
from jaxhead.utils.image_io import to_uint8
from jaxhead.utils.params_io import write_text_atomic

PERCEPTUAL = {"vgg16_nvidia": "checkpoints/vgg16_nvidia", "lpips_vgg": "checkpoints/lpips_vgg"}
COMPARE_YAWS = (math.pi / 3, -math.pi / 3, math.pi)


def psnr(mse_m11: np.ndarray) -> np.ndarray:
    """PSNR in dB from the MSE of images in [-1, 1] (peak-to-peak 2)."""
    return 10 * np.log10(4.0 / np.maximum(mse_m11, 1e-12))


def _write_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(img).save(tmp, format="PNG")
    tmp.replace(path)


def _mesh(batch: int, chunk: int | None = None) -> Mesh:
    """The largest set of local devices splitting ``batch`` evenly (into a multiple of
    ``chunk`` identities per device when chunking)."""
    devices = jax.local_devices()
    groups = batch // (chunk or 1)
    n = max(d for d in range(1, len(devices) + 1) if groups % d == 0)
    return Mesh(np.array(devices[:n]), ("data",))


def _place(tree, mesh: Mesh, batch: int):
    """Identity-axis arrays split over the mesh, everything else replicated."""
    part = NamedSharding(mesh, PartitionSpec("data"))
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.device_put(
        x, part if x.ndim and x.shape[0] == batch else rep), tree)


def _finite(*trees) -> bool:
    return all(bool(np.isfinite(np.asarray(x)).all()) for t in trees for x in jax.tree.leaves(t))


def run(args, G: PanoHead, params, lpips_params, targets: list[Target], out: Path,
        settings: dict) -> list[str]:
    """Invert ``targets`` into ``out``; returns the stems whose result was not finite (nothing
    of them is written)."""
    failed: list[str] = []
    cfg = ProjectorConfig(num_steps=args.steps, ray_start=args.ray_start)
    proj = Projector(G, params, lpips_params, cfg)
    mesh = _mesh(args.batch, args.chunk)
    print(f"w statistics from {cfg.w_avg_samples} samples ...", file=sys.stderr)
    stats = proj.w_stats()
    views = make_camera(jnp.array(COMPARE_YAWS), jnp.zeros(len(COMPARE_YAWS)))
    # one compiled render (the target camera + the turned views) serves the compare image and
    # the reported MSE / LPIPS (of its first view), for the projected and the tuned generator
    render = jit(lambda p, w, c: proj.render(p, w, c, jax.random.key(0)))
    losses = jit(proj.image_losses)

    def views_and_losses(p, w1, one: Targets) -> tuple[np.ndarray, float, float]:
        cams = jnp.concatenate([one.c, views])
        shown = render(p, jnp.repeat(w1, len(cams), 0), cams)
        m, q = losses(shown[:1], one, lpips_params)
        return np.asarray(shown), float(np.asarray(m)[0]), float(np.asarray(q)[0])
    key = jax.random.key(args.seed)
    for g0 in range(0, len(targets), args.batch):
        group = targets[g0:g0 + args.batch]
        real = len(group)
        group = group + [group[-1]] * (args.batch - real)  # fixed shapes: pad with a copy
        t0 = time.perf_counter()
        images = jnp.asarray(np.stack([load_image(t.path) for t in group]))
        cams = jnp.asarray(np.stack([t.camera for t in group]))
        tgt = _place(proj.targets(images, cams, stats), mesh, args.batch)
        state = _place(proj.init(stats, args.batch), mesh, args.batch)
        names = ", ".join(t.name for t in group[:real])
        with tqdm(total=args.steps, desc=f"project {names}"[:60], unit="step",
                  dynamic_ncols=True) as bar:
            for i in range(args.steps):
                state, terms = proj.step(state, tgt, stats, jax.random.fold_in(key, i),
                                         chunk=args.chunk, mesh=mesh if args.chunk else None)
                if i % 10 == 0 or i == args.steps - 1:
                    bar.set_postfix({k: f"{float(jnp.mean(v)):.4f}" for k, v in terms.items()})
                bar.update()
        w = state.w_opt
        tuned = None
        if args.pti_steps:
            pti = _place(proj.pti_init(args.batch), mesh, args.batch)
            with tqdm(total=args.pti_steps, desc="pivotal tuning", unit="step",
                      dynamic_ncols=True) as bar:
                for i in range(args.pti_steps):
                    pti, terms = proj.pti_step(pti, tgt, w, jax.random.fold_in(key, 10**6 + i),
                                               mesh=mesh)
                    if i % 10 == 0 or i == args.pti_steps - 1:
                        bar.set_postfix({k: f"{float(jnp.mean(v)):.4f}"
                                         for k, v in terms.items()})
                    bar.update()
            tuned = pti
        seconds = (time.perf_counter() - t0) / real
        for j, t in enumerate(group[:real]):
            p = params if tuned is None else proj.tuned_params(tuned, j)
            w1 = jnp.asarray(np.asarray(w[j:j + 1]))
            one = Targets(*(jnp.asarray(np.asarray(x[j:j + 1])) for x in tgt))
            shown, mse, perc = views_and_losses(params, w1, one)
            if tuned is not None:
                shown, m, q = views_and_losses(p, w1, one)
            if not _finite(w1, mse, perc, *(() if tuned is None else (p, m, q))):
                tqdm.write(f"{t.name}: the result is not finite (MSE {mse}, LPIPS {perc}); "
                           "nothing written for it")
                failed.append(t.stem)
                continue
            tiles = [to_uint8(np.asarray(images[j]))] + [to_uint8(x) for x in shown]
            files = outputs(out, t.stem, tuned is not None)
            info = {"image": t.name, "steps": args.steps, "seconds": round(seconds, 2),
                    "mse": mse, "lpips": perc, "psnr": float(psnr(np.float32(mse))),
                    "perceptual": args.perceptual,
                    "camera": [float(v) for v in t.camera],
                    "camera_corrected": [float(v) for v in np.asarray(tgt.c[j])],
                    "ray_start": proj.G.config.ray_start,
                    "settings": stem_settings(settings, t.camera)}
            if tuned is not None:
                info["pti"] = {"steps": args.pti_steps, "mse": m, "lpips": q,
                               "psnr": float(psnr(np.float32(m))), "generator": files[2].name}
            write_text_atomic(files[0], json.dumps(info, indent=1) + "\n")
            _write_png(files[1], np.concatenate(tiles, axis=1))
            if tuned is not None:
                save_panohead(files[2], proj.G, p,
                              extra={"source": "jaxhead.invert PTI", "image": t.name})
            write_npz(files[-1], np.asarray(w1), stem_settings(settings, t.camera))
            tqdm.write(f"{t.name}: PSNR {info['psnr']:.2f} dB, LPIPS {info['lpips']:.4f}"
                       + (f"; after PTI {info['pti']['psnr']:.2f} dB" if tuned else ""))
    return failed


def finite_float(text: str) -> float:
    """An argparse type: a finite float (``nan`` / ``inf`` are a one-line usage error)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = ArgumentParser(prog="python -m jaxhead.invert", description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", required=True, help="converted PanoHead directory")
    ap.add_argument("--images", required=True, help="PanoHead-layout folder or one image")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--steps", type=int, default=500, help="projection steps (500)")
    ap.add_argument("--pti-steps", type=int, default=0, help="pivotal tuning steps (0: off)")
    ap.add_argument("--batch", type=int, default=1, help="identities per step (1)")
    ap.add_argument("--chunk", type=int, default=None,
                    help="project this many identities at a time, in sequence (same result, "
                         "less memory; must divide --batch; default: all at once)")
    ap.add_argument("--yaw", type=finite_float, default=0.0,
                    help="one image's yaw, radians (0)")
    ap.add_argument("--pitch", type=finite_float, default=0.0,
                    help="one image's pitch, radians (0)")
    ap.add_argument("--perceptual", choices=sorted(PERCEPTUAL), default="vgg16_nvidia",
                    help="which converted LPIPS-VGG16 (vgg16_nvidia)")
    ap.add_argument("--perceptual-weights", default=None,
                    help="its directory (default checkpoints/<perceptual>)")
    ap.add_argument("--ray-start", type=finite_float, default=2.35,
                    help="render near plane during inversion (2.35, as the official script)")
    ap.add_argument("--seed", type=int, default=0, help="w-noise and ray-sampling seed")
    ap.add_argument("--no-verify", action="store_true", help="skip weight hash checks")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    for name in ("steps", "batch"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.chunk is not None and (a.chunk < 1 or a.batch % a.chunk):
        raise UsageError(f"--chunk must be a divisor of --batch {a.batch}, got {a.chunk}")
    if a.pti_steps < 0:
        raise UsageError(f"--pti-steps must be >= 0, got {a.pti_steps}")
    if a.ray_start <= 0:
        raise UsageError(f"--ray-start must be > 0, got {a.ray_start}")
    images = Path(a.images)
    if images.is_file() and images.suffix.lower() == ".json":
        raise UsageError("--images takes the folder that holds dataset.json, not the file")
    cam = frontal_camera(a.yaw, a.pitch) if images.is_file() else None
    targets = list_targets(images, camera=cam)
    for t in tqdm(targets, desc="checking images", unit="image", disable=len(targets) < 20):
        load_image(t.path)  # every bad image is reported before any compute
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} is a file, expected a directory")
    check_writable(out)  # before any model is loaded or any step computed
    G, params = load_panohead(a.generator, verify=not a.no_verify)
    if not G.has_t_mapping(params):
        G.camera_offset(params, jnp.zeros((1, G.z_dim)), jnp.zeros((1, 25)))  # raises, names fix
    if a.ray_start >= G.config.ray_end:
        raise UsageError(f"--ray-start {a.ray_start} must be below the generator's far plane "
                         f"{G.config.ray_end}")
    perceptual_dir = a.perceptual_weights or PERCEPTUAL[a.perceptual]
    lp = load_lpips_vgg(perceptual_dir, verify=not a.no_verify)
    settings = run_settings(steps=a.steps, pti_steps=a.pti_steps,
                            generator=directory_digest(a.generator),
                            perceptual=directory_digest(perceptual_dir),
                            ray_start=a.ray_start, seed=a.seed)
    todo, redo = pending(targets, out, a.pti_steps > 0, settings)
    for line in redo:
        print(line, file=sys.stderr)
    if len(todo) < len(targets):
        print(f"{len(targets) - len(todo)} of {len(targets)} images already done in {out}",
              file=sys.stderr)
    failed = run(a, G, params, lp, todo, out, settings) if todo else []
    if failed:
        raise DataError(f"the inversion of {', '.join(failed)} is not finite (check "
                        f"--ray-start, the cameras in {a.images} and the generator); nothing "
                        f"was written for {'it' if len(failed) == 1 else 'them'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
