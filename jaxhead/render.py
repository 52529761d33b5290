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
import os
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxhead import mesh as mesh_lib
from jaxhead.errors import ArgumentParser, DataError, UsageError, finite_float, run_cli
from jaxhead.generators import Generator3D, load_generator
from jaxhead.latents import check_fit, load_ws, parse_seeds
from jaxhead.turntable import (
    SHEET_VIEWS,
    compare_sheet,
    make_renderer,
    render_identity,
    seed_ws,
    write_mesh,
    write_outputs,
)
from jaxhead.utils.image_io import write_image


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
            written.append(write_image(out_dir / f"{name}_compare.png",
                                    compare_sheet(sheets[name], labels)))
    for p in written:
        print(p)
    return 0


def _imread(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(path)


if __name__ == "__main__":
    sys.exit(run_cli(main))
