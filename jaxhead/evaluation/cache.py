"""Content-addressed on-disk cache of the evaluation's expensive artefacts (renders, SD edits).

An entry's key is the SHA-256 of a JSON description of *all* its inputs (model content hashes,
identity bytes, cameras, settings), so a changed input is a new entry and an unchanged one is
never recomputed: adding a generator to a report reuses the others' renders and the edits, and
an interrupted evaluation resumes. Entries are written through a temporary file and a rename,
so a killed run leaves no half-written entry. Each entry also holds the description its key
was made from (``__inputs__``); an entry whose description differs, that lacks an array it
should hold, or that cannot be read (a damaged zip) is treated as absent and recomputed.

    cache = Cache(workdir / "cache")
    inputs = {"kind": "render", "generator": g_hash, "w": array_digest(w), ...}
    arrays = cache.get("renders", inputs, ("image", "depth"))   # None when absent or damaged
    cache.put("renders", inputs, {"image": ..., "depth": ...}, meta)
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxhead.errors import DataError
from jaxhead.utils.npz_io import npz_headers, read_npz


def array_digest(a: Any) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


INPUTS = "__inputs__"  # the array of an entry holding its key's description
# what reading a damaged .npz raises (a cut or altered zip directory, member or CRC)
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, NotImplementedError, RuntimeError,
               zipfile.BadZipFile, zlib.error, UnicodeDecodeError)


def _canonical(inputs: dict[str, Any]) -> str:
    return json.dumps(inputs, sort_keys=True, default=repr)


def content_key(inputs: dict[str, Any]) -> str:
    """Stable key of a JSON-able description (sorted keys; floats as repr)."""
    return hashlib.sha256(_canonical(inputs).encode()).hexdigest()


def directory_digest(directory: str | os.PathLike) -> str:
    """Content hash of a converted model directory: its recorded ``params_sha256`` (written by
    every converter and the trainer's export) with the configuration, else the file bytes."""
    d = Path(directory)
    cfg = d / "config.json"
    h = hashlib.sha256()
    if cfg.is_file():
        text = cfg.read_text()
        h.update(text.encode())
        if "params_sha256" in text:
            return h.hexdigest()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(d)).encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


class Cache:
    """``root/<kind>/<key[:2]>/<key>.npz`` (arrays and the key's description) with
    ``<key>.json`` (what it was made from, for people)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.npz"

    def get(self, kind: str, inputs: dict[str, Any], names: Sequence[str]
            ) -> dict[str, np.ndarray] | None:
        """The arrays ``names`` stored for ``inputs``, or None when the entry is absent,
        unreadable, made from another description or missing one of them (then the caller
        recomputes it and :meth:`put` replaces the entry)."""
        p = self.path(kind, content_key(inputs))
        if not p.is_file():
            return None
        try:  # headers checked before anything is read (jaxhead.utils.npz_io)
            if not {INPUTS, *names} <= set(npz_headers(p)):
                return None
            if str(read_npz(p, [INPUTS])[INPUTS]) != _canonical(inputs):
                return None
            return read_npz(p, list(names))
        except (DataError, *_UNREADABLE):
            return None

    def put(self, kind: str, inputs: dict[str, Any], arrays: dict[str, np.ndarray],
            meta: dict[str, Any] | None = None) -> Path:
        """Store ``arrays`` under the key of ``inputs`` (atomically, replacing any entry)."""
        from jaxhead.utils.params_io import write_text_atomic

        if INPUTS in arrays:
            raise ValueError(f"{INPUTS!r} is reserved for the entry's description")
        p = self.path(kind, content_key(inputs))
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.stem}.tmp.npz")
        try:
            np.savez(tmp, **arrays, **{INPUTS: np.array(_canonical(inputs))})
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        if meta is not None:
            write_text_atomic(p.with_suffix(".json"),
                              json.dumps(meta, indent=1, sort_keys=True, default=repr))
        return p
