"""Render 360-degree turntables, contact sheets and depth strips of a 3D generator (PanoHead).

    python -m jaxhead.render --generator DST --seeds 0,1,2 --out OUT

Per seed: ``seedXXXX_turntable.gif`` (or ``.mp4``), ``seedXXXX_sheet.png`` (8 yaws, 45 degrees
apart) and ``seedXXXX_depth.png`` (their depth maps). Without ``--generator`` a small built-in
random-weight demo generator is used (abstract shapes, not heads: it shows the pipeline works).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxhead.camera import make_camera
from jaxhead.errors import ArgumentParser, DataError, run_cli
from jaxhead.generators import Generator3D, load_generator

SHEET_VIEWS = 8


def seed_to_z(seed: int, z_dim: int = 512) -> np.ndarray:
    """The official scripts' latent for a seed: ``RandomState(seed).randn(1, z_dim)``."""
    return np.random.RandomState(seed).randn(1, z_dim).astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Generator image in [-1, 1] (NHWC) -> uint8."""
    return np.clip(np.rint(img * 127.5 + 128), 0, 255).astype(np.uint8)


def depth_to_uint8(depth: np.ndarray, acc: np.ndarray, size: int) -> np.ndarray:
    """Depth ``[N, r, r, 1]`` -> grayscale ``[N, size, size, 3]`` (near = bright), masked by acc."""
    from PIL import Image

    out = []
    for d, a in zip(depth[..., 0], acc[..., 0], strict=True):
        m = a > 0.5
        lo, hi = (d[m].min(), d[m].max()) if m.any() else (d.min(), d.max())
        v = np.where(m, 1.0 - (d - lo) / max(hi - lo, 1e-6), 0.0)
        img = Image.fromarray((v * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
        out.append(np.repeat(np.asarray(img)[..., None], 3, axis=-1))
    return np.stack(out)


def make_renderer(G: Generator3D, *, noise_mode: str, background: str):
    """jitted ``(params, planes [B, ...], ws [B, ...], c [B, 25]) -> (image, depth, acc)``."""

    @jax.jit
    def render(params, planes, ws, c):
        out = G.render(params, ws, c, planes, noise_mode=noise_mode,
                          deterministic=True, background=background)
        return out["image"], out["image_depth"], out["image_acc"]

    return render


def render_seed(G: Generator3D, params, seed: int, *, frames: int, batch: int, psi: float,
                cutoff: int, pitch: float, noise_mode: str, background: str, render,
                bar: tqdm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (turntable frames uint8 [F, 512, 512, 3], depth [F, r, r, 1], acc [F, r, r, 1])."""
    z = jnp.asarray(seed_to_z(seed, G.z_dim))
    c_cond = make_camera(jnp.zeros(1), jnp.zeros(1), radius=G.camera_radius)
    ws = G.mapping(params, z, c_cond, truncation_psi=psi, truncation_cutoff=cutoff)
    planes = G.representation(params, ws, noise_mode=noise_mode)
    yaws = np.arange(frames, dtype=np.float32) * (2 * math.pi / frames)
    imgs, depths, accs = [], [], []
    for s in range(0, frames, batch):
        yb = yaws[s:s + batch]
        nb = len(yb)
        yb = np.pad(yb, (0, batch - nb), mode="edge")  # fixed batch: one compilation
        c = make_camera(jnp.asarray(yb), jnp.full((batch,), pitch),
                        radius=G.camera_radius)
        img, dep, acc = render(params, jnp.repeat(planes, batch, 0), jnp.repeat(ws, batch, 0), c)
        imgs.append(to_uint8(np.asarray(img)[:nb]))
        depths.append(np.asarray(dep)[:nb])
        accs.append(np.asarray(acc)[:nb])
        bar.update(nb)
    return np.concatenate(imgs), np.concatenate(depths), np.concatenate(accs)


def _imwrite(path: Path, data: np.ndarray, **kwargs) -> Path:
    """``imageio.v3.imwrite`` through a temporary file and a rename: a failed write (disk
    full, ...) keeps an earlier file of that name and removes the temporary one."""
    import imageio.v3 as iio

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # ffmpeg picks the format by suffix
    try:
        iio.imwrite(tmp, data, extension=path.suffix, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_outputs(out_dir: Path, seed: int, frames: np.ndarray, depth: np.ndarray,
                  acc: np.ndarray, fmt: str, fps: int) -> list[Path]:
    """Turntable (gif/mp4), 8-yaw sheet and depth strip for one seed."""
    stem = f"seed{seed:04d}"
    paths = []
    if fmt == "gif":
        paths.append(_imwrite(out_dir / f"{stem}_turntable.gif", frames, duration=1000 / fps,
                              loop=0))
    else:
        paths.append(_imwrite(out_dir / f"{stem}_turntable.mp4", frames, fps=fps,
                              codec="libx264", plugin="pyav" if _has_pyav() else None))
    idx = np.arange(SHEET_VIEWS) * (len(frames) // SHEET_VIEWS)
    paths.append(_imwrite(out_dir / f"{stem}_sheet.png",
                          np.concatenate(list(frames[idx]), axis=1)))
    dimg = depth_to_uint8(depth[idx], acc[idx], frames.shape[1] // 2)
    paths.append(_imwrite(out_dir / f"{stem}_depth.png", np.concatenate(list(dimg), axis=1)))
    return paths


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and write (then delete) a probe file in it, so an unwritable output
    directory is reported before any rendering time is spent (``DataError`` naming it)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-") as f:
            f.write(b"x")
            f.flush()
    except OSError as e:
        raise DataError(f"output directory {str(out_dir)!r} is not writable: "
                        f"{e.strerror or e}") from e


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def parse_seeds(s: str) -> list[int]:
    """``"0,1,5-7"`` -> [0, 1, 5, 6, 7]."""
    out: list[int] = []
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    if not out:
        raise argparse.ArgumentTypeError("no seeds given")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m jaxhead.render", description=__doc__)
    ap.add_argument("--generator", help="converted generator directory (default: built-in "
                    "random-weight demo generator)")
    ap.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0,1,2"),
                    help="e.g. 0,1,2 or 0-7")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--frames", type=int, default=16, help="turntable frames (multiple of 8)")
    ap.add_argument("--batch", type=int, default=4, help="views rendered per call")
    ap.add_argument("--psi", type=float, default=0.7, help="truncation psi")
    ap.add_argument("--cutoff", type=int, default=14, help="truncation cutoff")
    ap.add_argument("--pitch", type=float, default=0.0, help="camera pitch (radians)")
    ap.add_argument("--noise-mode", default="const", choices=["const", "none"])
    ap.add_argument("--background", default="white", choices=["network", "none", "white"])
    ap.add_argument("--format", default="gif", choices=["gif", "mp4"])
    ap.add_argument("--fps", type=int, default=12)
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the generator's content-hash and NaN/inf check on loading")
    args = ap.parse_args(argv)
    if args.frames < SHEET_VIEWS or args.frames % SHEET_VIEWS:
        ap.error(f"--frames must be a positive multiple of {SHEET_VIEWS}")
    if args.batch < 1:
        ap.error("--batch must be >= 1")

    if args.fps < 1:
        ap.error("--fps must be >= 1")

    if args.generator:
        G, params = load_generator(args.generator, verify=not args.no_verify)
        name = os.fspath(args.generator)
    else:
        from jaxhead.models.panohead.demo import demo_generator

        G, params = demo_generator(0)
        name = "built-in demo generator (random weights)"
    out_dir = Path(args.out)
    check_writable(out_dir)
    print(f"rendering {len(args.seeds)} seed(s) x {args.frames} views with {name} "
          f"on {jax.default_backend()}")
    render = make_renderer(G, noise_mode=args.noise_mode, background=args.background)
    written: list[Path] = []
    with tqdm(total=len(args.seeds) * args.frames, unit="view", dynamic_ncols=True) as bar:
        for seed in args.seeds:
            bar.set_description(f"seed {seed}")
            frames, depth, acc = render_seed(
                G, params, seed, frames=args.frames, batch=args.batch, psi=args.psi,
                cutoff=args.cutoff, pitch=args.pitch, noise_mode=args.noise_mode,
                background=args.background, render=render, bar=bar)
            written += write_outputs(out_dir, seed, frames, depth, acc, args.format, args.fps)
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
