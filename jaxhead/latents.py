"""Inverted identities on disk: ``<stem>.npz`` files holding ``w`` float32 ``[1, num_ws, w_dim]``
(the layout of PanoHead's projector output ``*_ws.npz`` / ``projected_w.npz``, read by the
paper's inference as ``np.load(f)["w"]``). The identity's name is the file stem.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxhead.errors import DataError
from jaxhead.utils.npz_io import npz_headers, read_npz

LAYOUT = "an .npz with key 'w' of shape [1, num_ws, w_dim] (PanoHead's projected_w.npz layout)"


def save_ws(path: str | os.PathLike, w: np.ndarray) -> Path:
    """Write one identity ``w [1, num_ws, w_dim]`` as ``path`` (``.npz``, key ``w``, float32)."""
    w = np.asarray(w, np.float32)
    if w.ndim != 3 or w.shape[0] != 1:
        raise ValueError(f"w must be [1, num_ws, w_dim], got {w.shape}")
    path = Path(path)
    with open(path, "wb") as f:
        np.savez(f, w=w)
    return path


def seed_to_z(seed: int, z_dim: int = 512) -> np.ndarray:
    """The official scripts' latent for a seed: ``RandomState(seed).randn(1, z_dim)``."""
    return np.random.RandomState(seed).randn(1, z_dim).astype(np.float32)


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


# a w is a few tens of KB ([1, 14, 512] float32 for PanoHead); a header declaring more is refused
# before anything is allocated
MAX_W_BYTES = 16 << 20


def read_ws(path: str | os.PathLike) -> np.ndarray:
    """``w`` of one ``.npz`` file -> float32 ``[1, num_ws, w_dim]``; a file that is not an
    npz, has no ``w``, a ``w`` of another rank, over :data:`MAX_W_BYTES` or with non-finite
    values: :class:`DataError`. The array's header is checked before its data is read
    (:func:`jaxhead.utils.npz_io.read_npz`)."""
    where = os.fspath(path)
    if Path(path).suffix != ".npz":
        raise DataError(f"{where!r} is not an .npz file (expected {LAYOUT})")
    headers = npz_headers(path)
    h = headers.get("w")
    if h is None:
        raise DataError(f"{where!r} has no array 'w' (it has {sorted(headers)}; expected "
                        f"{LAYOUT})")
    if len(h.shape) != 3 or h.shape[0] != 1 or h.dtype.kind != "f":
        raise DataError(f"{where!r}: w is {h.dtype} {list(h.shape)}, expected float "
                        f"[1, num_ws, w_dim]")
    w = read_npz(path, ["w"], max_bytes=MAX_W_BYTES)["w"]
    if not np.all(np.isfinite(w)):
        raise DataError(f"{where!r}: w has non-finite values")
    return w.astype(np.float32)


def ws_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """``.npz`` files of each path (a file, or every ``*.npz`` of a directory, sorted by
    name); a missing path, an empty directory or two files of one stem: :class:`DataError`."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.glob("*.npz") if q.is_file())
            if not found:
                raise DataError(f"{os.fspath(p)!r} holds no .npz files (expected one "
                                f"<name>.npz per identity, {LAYOUT})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{os.fspath(p)!r} does not exist (expected a directory of .npz "
                            f"files or one .npz file, {LAYOUT})")
    seen: dict[str, Path] = {}
    for q in out:
        if q.stem in seen:
            raise DataError(f"two identities named {q.stem!r}: {os.fspath(seen[q.stem])!r} "
                            f"and {os.fspath(q)!r}")
        seen[q.stem] = q
    return out


def load_ws(paths: str | os.PathLike | Sequence[str | os.PathLike], *,
            num_ws: int | None = None, w_dim: int | None = None) -> list[tuple[str, np.ndarray]]:
    """``[(name, w [1, num_ws, w_dim])]`` of the ``.npz`` files under ``paths``
    (:func:`ws_files`); with ``num_ws`` / ``w_dim`` each ``w`` must have that shape
    (:func:`check_fit`)."""
    items = []
    for q in ws_files(paths):
        w = read_ws(q)
        check_fit(w, num_ws, w_dim, where=os.fspath(q))
        items.append((q.stem, w))
    return items


def check_fit(w: np.ndarray, num_ws: int | None, w_dim: int | None, *, where: str) -> None:
    """:class:`DataError` when ``w [1, n, d]`` does not fit a generator taking ``num_ws`` rows
    of width ``w_dim`` (``None``: not checked)."""
    _, n, d = w.shape
    if (num_ws is not None and n != num_ws) or (w_dim is not None and d != w_dim):
        raise DataError(f"{where!r}: w is [1, {n}, {d}], but the generator takes "
                        f"[1, {num_ws}, {w_dim}] (num_ws, w_dim); was it inverted into "
                        "another generator?")
