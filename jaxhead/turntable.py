"""Turntables of one identity: the jitted renderer, a seed's ws, 360-degree frames, their
8-yaw sheet and depth strip, a labelled comparison of several generators, meshes on disk.
The library under ``python -m jaxhead.render`` (and the evaluation's renders)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxhead import mesh as mesh_lib
from jaxhead.camera import make_camera
from jaxhead.generators import Generator3D
from jaxhead.latents import seed_to_z
from jaxhead.utils.compile import jit
from jaxhead.utils.image_io import to_uint8, write_image

SHEET_VIEWS = 8  # yaws of a contact sheet, 45 degrees apart


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
    """jitted ``(params, planes [B, ...], ws [B, ...], c [B, 25]) -> (image, depth, acc)``;
    one per (generator configuration, mode), so later calls in a process reuse its compilation."""

    @jit
    def render(params, planes, ws, c):
        out = G.render(params, ws, c, planes, noise_mode=noise_mode,
                          deterministic=True, background=background)
        return out["image"], out["image_depth"], out["image_acc"]

    return render


@functools.lru_cache(maxsize=8)
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


def write_outputs(out_dir: Path, stem: str | int, frames: np.ndarray, depth: np.ndarray,
                  acc: np.ndarray, fmt: str, fps: int) -> list[Path]:
    """Turntable (gif/mp4), 8-yaw sheet and depth strip of one identity named ``stem`` (an
    int is a seed: ``seedXXXX``)."""
    if not isinstance(stem, str):
        stem = f"seed{stem:04d}"
    paths = []
    if fmt == "gif":
        paths.append(write_image(out_dir / f"{stem}_turntable.gif", frames, duration=1000 / fps,
                              loop=0))
    else:
        paths.append(write_image(out_dir / f"{stem}_turntable.mp4", frames, fps=fps,
                              codec="libx264", plugin="pyav" if _has_pyav() else None))
    idx = np.arange(SHEET_VIEWS) * (len(frames) // SHEET_VIEWS)
    paths.append(write_image(out_dir / f"{stem}_sheet.png",
                          np.concatenate(list(frames[idx]), axis=1)))
    dimg = depth_to_uint8(depth[idx], acc[idx], frames.shape[1] // 2)
    paths.append(write_image(out_dir / f"{stem}_depth.png", np.concatenate(list(dimg), axis=1)))
    return paths


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


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


__all__ = ["SHEET_VIEWS", "compare_sheet", "depth_to_uint8", "make_renderer", "render_identity",
           "seed_ws", "write_mesh", "write_outputs"]
