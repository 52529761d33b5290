"""Render 360-degree turntables, contact sheets, depth strips and meshes of 3D generators.

    python -m jaxhead.render --generator DIR --seeds 0,1,2 --out OUT
    python -m jaxhead.render --generator DIR --ws INVERTED_DIR --out OUT     # inverted photos
    python -m jaxhead.render --generator frozen=A --generator pixar=B --ws W --out OUT --mesh

Per identity (``seedXXXX`` for a seed, the file stem for a ``--ws`` file): ``<id>_turntable.gif``
(or ``.mp4``), ``<id>_sheet.png`` (8 yaws, 45 degrees apart), ``<id>_depth.png`` (their depth
maps) and with ``--mesh`` ``<id>.ply`` + ``<id>.obj`` (marching cubes of the density, as
PanoHead's ``--shapes``). With several ``--generator`` each one's files go to ``OUT/<label>/``
and ``OUT/<id>_compare.png`` stacks their sheets. Without ``--generator`` a small built-in
random-weight demo generator is used (abstract shapes, not heads: it shows the pipeline works).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxhead import mesh as mesh_lib
from jaxhead.camera import make_camera
from jaxhead.errors import ArgumentParser, DataError, UsageError, finite_float, run_cli
from jaxhead.generators import Generator3D, load_generator
from jaxhead.latents import check_fit, load_ws
from jaxhead.utils.compile import jit

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


@functools.lru_cache(maxsize=8)
def make_renderer(G: Generator3D, *, noise_mode: str, background: str):
    """jitted ``(params, planes [B, ...], ws [B, ...], c [B, 25]) -> (image, depth, acc)``;
    one per (generator configuration, mode), so later calls in a process reuse its compilation."""

    @jit
    def render(params, planes, ws, c):
        out = G.render(params, ws, c, planes, noise_mode=noise_mode,
                          deterministic=True, background=background)
        return out["image"], out["image_depth"], out["image_acc"]

    return render


@functools.lru_cache(maxsize=8)
def _mapping_fn(G: Generator3D, psi: float, cutoff: int):
    return jit(functools.partial(G.mapping, truncation_psi=psi, truncation_cutoff=cutoff))


def seed_ws(G: Generator3D, params, seed: int, *, psi: float, cutoff: int) -> jax.Array:
    """The ws of a seed as rendered here: ``RandomState(seed)`` z through the mapping with the
    frontal conditioning camera and truncation ``psi`` up to ``cutoff`` -> ``[1, num_ws, w_dim]``
    (save it with :func:`jaxhead.latents.save_ws` and ``--ws`` renders the same identity)."""
    z = jnp.asarray(seed_to_z(seed, G.z_dim))
    c_cond = make_camera(jnp.zeros(1), jnp.zeros(1), radius=G.camera_radius)
    return _mapping_fn(G, float(psi), int(cutoff))(params, z, c_cond)


def render_identity(G: Generator3D, params, ws: jax.Array, *, frames: int, batch: int,
                    pitch: float, noise_mode: str, render, bar: tqdm
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One identity ``ws [1, num_ws, w_dim]`` around 360 degrees -> (turntable frames uint8
    ``[F, S, S, 3]``, depth ``[F, r, r, 1]``, acc ``[F, r, r, 1]``)."""
    planes = mesh_lib.representation_fn(G, noise_mode)(params, ws)
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


def write_outputs(out_dir: Path, stem: str | int, frames: np.ndarray, depth: np.ndarray,
                  acc: np.ndarray, fmt: str, fps: int) -> list[Path]:
    """Turntable (gif/mp4), 8-yaw sheet and depth strip of one identity named ``stem`` (an
    int is a seed: ``seedXXXX``)."""
    if not isinstance(stem, str):
        stem = f"seed{stem:04d}"
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


def parse_generator(s: str) -> tuple[str | None, str]:
    """``[LABEL=]DIR`` -> (label or None, DIR); ``=`` splits only when ``s`` is not itself an
    existing path and LABEL has no path separator."""
    if "=" in s and not Path(s).exists():
        label, path = s.split("=", 1)
        if label and "/" not in label and os.sep not in label:
            return label, path
    return None, s


def generator_labels(specs: list[tuple[str | None, str]]) -> list[str]:
    """Output folder names: each LABEL, else the directory's name, else (a clash) its last two
    path parts joined by ``_``; still clashing -> :class:`UsageError`."""
    def auto(path: str, parts: int) -> str:
        p = Path(os.path.abspath(path)).parts[-parts:]
        return "_".join(p)

    labels = [lab or auto(path, 1) for lab, path in specs]
    labels = [lab if specs[i][0] or labels.count(lab) == 1 else auto(specs[i][1], 2)
              for i, lab in enumerate(labels)]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UsageError(f"two generators would write to the same folder {dup[0]!r}: name them "
                         "with --generator LABEL=DIR")
    return labels


def compare_sheet(sheets: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """Contact sheets of one identity by several generators, stacked, each row labelled."""
    from PIL import Image, ImageDraw, ImageFont

    h = sheets[0].shape[0]
    width = max(160, h // 3)
    font = ImageFont.load_default(size=max(12, min(width // 8, 28)))
    rows = []
    for sheet, label in zip(sheets, labels, strict=True):
        img = Image.new("RGB", (width, h), "white")
        ImageDraw.Draw(img).text((8, h // 2), label, fill="black", font=font, anchor="lm")
        rows.append(np.concatenate([np.asarray(img), sheet], axis=1))
    return np.concatenate(rows, axis=0)


def write_mesh(out_dir: Path, stem: str, m) -> list[Path]:
    """``<stem>.ply`` and ``<stem>.obj`` of one identity's mesh."""
    from jaxhead.utils import mesh_io

    return [mesh_io.write_ply(out_dir / f"{stem}.ply", m),
            mesh_io.write_obj(out_dir / f"{stem}.obj", m)]


def build_parser():
    """The command line, built without running it (tests/test_readme_commands.py checks
    the docs' commands against it)."""
    ap = ArgumentParser(prog="python -m jaxhead.render", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", action="append", metavar="[LABEL=]DIR",
                    help="converted or stylized generator directory; repeat to render the "
                    "same identities with several generators side by side (default: built-in "
                    "random-weight demo generator)")
    ap.add_argument("--seeds", type=parse_seeds, default=None,
                    help="e.g. 0,1,2 or 0-7 (default 0,1,2)")
    ap.add_argument("--ws", action="append", metavar="FILE_OR_DIR",
                    help="inverted latents instead of seeds: an .npz with 'w' [1, num_ws, "
                    "w_dim] or a directory of them (repeatable); names are the file stems")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--frames", type=int, default=16, help="turntable frames (multiple of 8)")
    ap.add_argument("--batch", type=int, default=4, help="views rendered per call")
    ap.add_argument("--psi", type=finite_float, default=0.7, help="truncation psi (seeds only)")
    ap.add_argument("--cutoff", type=int, default=14, help="truncation cutoff (seeds only)")
    ap.add_argument("--pitch", type=finite_float, default=0.0, help="camera pitch (radians)")
    ap.add_argument("--noise-mode", default="const", choices=["const", "none"])
    ap.add_argument("--background", default="white", choices=["network", "none", "white"])
    ap.add_argument("--format", default="gif", choices=["gif", "mp4"])
    ap.add_argument("--fps", type=int, default=12)
    ap.add_argument("--mesh", action="store_true",
                    help="also write <id>.ply and <id>.obj (marching cubes of the density)")
    ap.add_argument("--mesh-only", action="store_true", help="meshes only, no turntables")
    ap.add_argument("--mesh-res", type=int, default=256, help="density grid N (N^3 points; "
                    "PanoHead: 512)")
    ap.add_argument("--mesh-level", type=finite_float, default=None,
                    help="iso level of the raw density (default 10 as PanoHead; 0 for the "
                    "built-in demo generator, whose density stays below 10)")
    ap.add_argument("--mesh-colors", action="store_true",
                    help="vertex colours: the generator's colour at each vertex")
    ap.add_argument("--mesh-chunk", type=int, default=mesh_lib.DEFAULT_CHUNK,
                    help="density points per compiled call (bounds memory)")
    ap.add_argument("--mesh-frame", default="world", choices=["world", "panohead"],
                    help="vertex coordinates: world units and axes, or PanoHead's voxel units "
                    "of its flipped, transposed grid")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the generator's content-hash and NaN/inf check on loading")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.frames < SHEET_VIEWS or args.frames % SHEET_VIEWS:
        ap.error(f"--frames must be a positive multiple of {SHEET_VIEWS}")
    if args.batch < 1:
        ap.error("--batch must be >= 1")
    if args.fps < 1:
        ap.error("--fps must be >= 1")
    if args.seeds is not None and args.ws:
        ap.error("give --seeds or --ws, not both")
    args.mesh = args.mesh or args.mesh_only
    if not 8 <= args.mesh_res <= 1024:
        ap.error("--mesh-res must be in [8, 1024]")
    if args.mesh_chunk < 1:
        ap.error("--mesh-chunk must be >= 1")

    gens: list[tuple[str, Generator3D, object, str]] = []  # (label, G, params, description)
    if args.generator:
        specs = [parse_generator(g) for g in args.generator]
        for label, (_, path) in zip(generator_labels(specs), specs, strict=True):
            G, params = load_generator(path, verify=not args.no_verify)
            gens.append((label, G, params, path))
        level = 10.0 if args.mesh_level is None else args.mesh_level
    else:
        from jaxhead.models.panohead.demo import demo_generator

        G, params = demo_generator(0)
        gens.append(("demo", G, params, "built-in demo generator (random weights)"))
        level = 0.0 if args.mesh_level is None else args.mesh_level
    inverted = None
    if args.ws:
        inverted = load_ws(args.ws)
        for _, G, _, desc in gens:  # every file fits every generator, before any work
            for name, w in inverted:
                check_fit(w, G.num_ws, G.w_dim, where=f"{name}.npz for {desc}")
    seeds = args.seeds if args.seeds is not None else parse_seeds("0,1,2")
    names = [n for n, _ in inverted] if inverted else [f"seed{s:04d}" for s in seeds]
    out_dir = Path(args.out)
    check_writable(out_dir)
    dirs = [out_dir] if len(gens) == 1 else [out_dir / g[0] for g in gens]
    for d in dirs:
        check_writable(d)
    what = (("" if args.mesh_only else f"{args.frames} views")
            + (" + " if args.mesh and not args.mesh_only else "")
            + (f"a {args.mesh_res}^3 mesh" if args.mesh else ""))
    written: list[Path] = []
    sheets: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for (label, G, params, desc), gdir in zip(gens, dirs, strict=True):
        print(f"rendering {len(names)} identities x {what} with {desc} "
              f"on {jax.default_backend()}")
        render = make_renderer(G, noise_mode=args.noise_mode, background=args.background)
        total = 0 if args.mesh_only else len(names) * args.frames
        with tqdm(total=total, unit="view", dynamic_ncols=True,
                  disable=args.mesh_only) as bar:
            for i, name in enumerate(names):
                bar.set_description(f"{label}: {name}" if len(gens) > 1 else name)
                ws = (jnp.asarray(inverted[i][1]) if inverted else
                      seed_ws(G, params, seeds[i], psi=args.psi, cutoff=args.cutoff))
                if not args.mesh_only:
                    frames, depth, acc = render_identity(
                        G, params, ws, frames=args.frames, batch=args.batch, pitch=args.pitch,
                        noise_mode=args.noise_mode, render=render, bar=bar)
                    paths = write_outputs(gdir, name, frames, depth, acc, args.format,
                                          args.fps)
                    written += paths
                    if len(gens) > 1:
                        sheets[name].append(np.asarray(_imread(paths[1])))
                if args.mesh:
                    m = mesh_lib.generator_mesh(
                        G, params, ws, resolution=args.mesh_res, level=level,
                        colors=args.mesh_colors, chunk=args.mesh_chunk,
                        frame=args.mesh_frame, noise_mode=args.noise_mode)
                    written += write_mesh(gdir, name, m)
                    tqdm.write(f"{label}: {name}: mesh with {len(m.vertices)} vertices, "
                               f"{len(m.faces)} faces")
    if len(gens) > 1 and not args.mesh_only:
        labels = [g[0] for g in gens]
        for name in names:
            written.append(_imwrite(out_dir / f"{name}_compare.png",
                                    compare_sheet(sheets[name], labels)))
    for p in written:
        print(p)
    return 0


def _imread(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(path)


if __name__ == "__main__":
    sys.exit(run_cli(main))
