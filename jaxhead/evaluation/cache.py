"""Content-addressed on-disk cache of the evaluation's expensive artefacts (renders, SD edits).

An entry's key is the SHA-256 of a JSON description of *all* its inputs (model content hashes,
identity bytes, cameras, settings), so a changed input is a new entry and an unchanged one is
never recomputed: adding a generator to a report reuses the others' renders and the edits, and
an interrupted evaluation resumes. Entries are written through a temporary file and a rename,
so a killed run leaves no half-written entry.

    cache = Cache(workdir / "cache")
    key = content_key({"kind": "render", "generator": g_hash, "w": array_digest(w), ...})
    arrays = cache.get("renders", key)            # None when absent
    cache.put("renders", key, {"image": ..., "depth": ...}, meta)
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


def array_digest(a: Any) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def content_key(inputs: dict[str, Any]) -> str:
    """Stable key of a JSON-able description (sorted keys; floats as repr)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=repr).encode()).hexdigest()


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
    """``root/<kind>/<key[:2]>/<key>.npz`` (arrays) with ``<key>.json`` (what it was made
    from, for people)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.npz"

    def get(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        """The stored arrays, or None if absent or unreadable (then it is recomputed)."""
        p = self.path(kind, key)
        if not p.is_file():
            return None
        try:
            with np.load(p) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            return None

    def put(self, kind: str, key: str, arrays: dict[str, np.ndarray],
            meta: dict[str, Any] | None = None) -> Path:
        p = self.path(kind, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.stem}.tmp.npz")
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        if meta is not None:
            p.with_suffix(".json").write_text(json.dumps(meta, indent=1, sort_keys=True,
                                                         default=repr))
        return p
