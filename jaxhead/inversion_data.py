"""Targets for inversion: PanoHead's preprocessed layout or one image with a yaw/pitch camera.

A folder holds aligned crops and ``dataset.json`` = ``{"labels": [[file, [25 numbers]], ...]}``
(16 cam2world values row-major + 9 normalized intrinsics, numbers or numeric strings, as
PanoHead's 3DDFA_V2 cropping guide writes them). Every image in the folder needs a label. As the
official projector, an image is centre-cropped to a square and resized to 512 px with LANCZOS;
a non-square picture (not a crop) or one under 128 px is refused.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxhead.errors import DataError
from jaxhead.utils.image_io import read_rgb

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LAYOUT = ("PanoHead's preprocessed layout: aligned square crops plus dataset.json = "
          '{"labels": [[file, [16 cam2world + 9 intrinsics]], ...]}')
MIN_SIZE = 128


@dataclass(frozen=True)
class Target:
    """One image to invert: ``name`` (relative path), ``stem`` (output name), ``camera`` [25]."""

    path: Path
    name: str
    stem: str
    camera: np.ndarray


def _stem(name: str) -> str:
    return os.path.splitext(name)[0].replace("/", "__")


def _number(v: object) -> float:
    """A label value: a number or a numeric string (JSON ``true`` / ``false`` are refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"{v!r} is not a number")
    return float(v)


def camera_problem(c: np.ndarray) -> str | None:
    """Why ``c`` [25] is not a camera (cam2world with a rotation, the camera within 100 units
    of the head, positive focal lengths), or None."""
    if c.shape != (25,) or not np.isfinite(c).all():
        return f"has {c.size} values (need 25 finite)"
    m, k = c[:16].astype(np.float64).reshape(4, 4), c[16:].astype(np.float64).reshape(3, 3)
    r = m[:3, :3]
    if np.abs(r.T @ r - np.eye(3)).max() > 1e-2 or np.linalg.det(r) < 0:
        return "cam2world's upper-left 3x3 is not a rotation"
    if np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-3:
        return f"cam2world's last row is {m[3].tolist()}, not [0, 0, 0, 1]"
    if not 0 < np.linalg.norm(m[:3, 3]) <= 100:
        return f"the camera is {np.linalg.norm(m[:3, 3]):.3g} units from the head"
    if not (0 < k[0, 0] <= 1e3 and 0 < k[1, 1] <= 1e3) or np.abs(k[:2, 2]).max() > 1e3 \
            or np.abs(k[2] - [0, 0, 1]).max() > 1e-3:
        return f"the intrinsics {k.ravel().tolist()} are not [fx, 0, cx, 0, fy, cy, 0, 0, 1] " \
               "with focal lengths in (0, 1000]"
    return None


def read_labels(folder: Path) -> dict[str, np.ndarray]:
    """``dataset.json`` -> ``{relative file name: camera [25] float32}``; a label that is not a
    camera is refused naming the file and the entry."""
    path = folder / "dataset.json"
    if not path.is_file():
        raise DataError(f"{str(folder)!r} has no dataset.json; expected {LAYOUT}")
    where = "labels"
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
        if not isinstance(labels, list):
            raise TypeError(f"labels is a {type(labels).__name__}, not a list")
        out = {}
        for i, entry in enumerate(labels):
            where = f"entry {i}"
            name, cam = entry
            if not isinstance(name, str) or not isinstance(cam, list):
                raise TypeError("expected [file name, [25 numbers]]")
            where = f"entry {i} ({name!r})"
            c = np.asarray([_number(v) for v in cam], np.float64)
            problem = camera_problem(c)
            if problem is not None:
                raise ValueError(f"camera {problem}")
            out[name.replace("\\", "/")] = c.astype(np.float32)
    except RecursionError:
        raise DataError(f"{str(path)!r} is nested too deeply to be a PanoHead label file; "
                        f"expected {LAYOUT}") from None
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise DataError(f"{str(path)!r}: {where}: not a PanoHead label ({e}); expected "
                        f"{LAYOUT}") from None
    return out


def list_targets(path: str | os.PathLike, *, camera: np.ndarray | None = None
                 ) -> list[Target]:
    """The images under ``path`` (a folder with ``dataset.json``) or ``path`` itself (one
    image, with ``camera`` [25]). Raises ``DataError`` naming a file without a label."""
    p = Path(path)
    if p.is_file():
        if camera is None:
            raise ValueError("one image needs a camera")
        return [Target(p, p.name, _stem(p.name), np.asarray(camera, np.float32))]
    if not p.is_dir():
        raise DataError(f"--images {str(p)!r} does not exist")
    labels = read_labels(p)
    names = sorted(str(f.relative_to(p)).replace(os.sep, "/") for f in p.rglob("*")
                   if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
    if not names:
        raise DataError(f"{str(p)!r} holds no images; expected {LAYOUT}")
    missing = [n for n in names if n not in labels]
    if missing:
        raise DataError(f"{str(p / missing[0])!r} has no camera label in dataset.json"
                        f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                        f"expected {LAYOUT}")
    stems = [_stem(n) for n in names]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise DataError(f"two images in {str(p)!r} share the output name {dup!r}")
    return [Target(p / n, n, s, labels[n]) for n, s in zip(names, stems, strict=True)]


def load_image(path: Path, size: int = 512) -> np.ndarray:
    """An image as float32 ``[size, size, 3]`` in [-1, 1] (centre square, LANCZOS resize).

    Raises ``DataError`` naming the file when it is unreadable or not a square crop."""
    from PIL import Image

    im = read_rgb(path)
    w, h = im.size
    if w != h or w < MIN_SIZE:
        raise DataError(f"{str(path)!r} is {w}x{h}: expected a square aligned crop of at "
                        f"least {MIN_SIZE} px ({LAYOUT})")
    if w != size:
        im = im.resize((size, size), Image.LANCZOS)
    return np.asarray(im, np.float32) / 255 * 2 - 1


def frontal_camera(yaw: float = 0.0, pitch: float = 0.0) -> np.ndarray:
    """A PanoHead camera [25] for one image without a label (yaw/pitch in radians)."""
    import jax.numpy as jnp

    from jaxhead.camera import make_camera

    if not (math.isfinite(yaw) and math.isfinite(pitch)):
        raise ValueError("yaw and pitch must be finite")
    return np.asarray(make_camera(jnp.array([yaw]), jnp.array([pitch])))[0]


__all__ = ["LAYOUT", "Target", "camera_problem", "frontal_camera", "list_targets", "load_image",
           "read_labels"]
