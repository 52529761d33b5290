"""``jaxhead.invert``'s output files per stem, the settings recorded with them, and which stems
are done.

A stem is done when its ``<stem>.npz`` holds a finite ``w`` and records (``settings``, a JSON
string array) the same settings as this run: projection and PTI steps, the generator's and the
perceptual network's content hashes, the camera, the near plane and the seed. A stem made with
other settings is redone (the log names the changed ones); the ``.npz`` is written last and
atomically, so an interrupted redo is redone again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxhead.errors import DataError
from jaxhead.latents import MAX_W_BYTES
from jaxhead.utils.npz_io import npz_headers, read_npz

SETTINGS = "settings"  # the npz array holding the settings (JSON)


def outputs(out: Path, stem: str, pti: bool) -> list[Path]:
    """The files a finished stem has (the ``.npz`` last: it marks the stem done)."""
    files = [out / f"{stem}.json", out / f"{stem}_compare.png"]
    if pti:
        files.append(out / f"{stem}_pti")
    return files + [out / f"{stem}.npz"]


def run_settings(*, steps: int, pti_steps: int, generator: str, perceptual: str,
                 ray_start: float, seed: int) -> dict[str, Any]:
    """The settings shared by every stem of a run (``generator`` / ``perceptual``: content
    hashes of the model directories)."""
    return {"steps": int(steps), "pti_steps": int(pti_steps), "generator": generator,
            "perceptual": perceptual, "ray_start": float(ray_start), "seed": int(seed)}


def stem_settings(run: dict[str, Any], camera: np.ndarray) -> dict[str, Any]:
    """One stem's settings: the run's and its camera [25]."""
    return {**run, "camera": [float(v) for v in np.asarray(camera, np.float32)]}


def write_npz(path: Path, w: np.ndarray, settings: dict[str, Any]) -> None:
    """``w`` (float32) and the settings it was made with, through a temporary file."""
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        np.savez(tmp, w=np.asarray(w, np.float32),
                 **{SETTINGS: np.array(json.dumps(settings, sort_keys=True))})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _recorded(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(settings, None)`` of a finished stem's npz, or ``(None, why it is not done)``."""
    try:  # headers checked before anything is read (jaxhead.utils.npz_io)
        has_settings = SETTINGS in npz_headers(path)
        w = read_npz(path, ["w"], max_bytes=MAX_W_BYTES)["w"]
        if not np.isfinite(w).all():
            return None, "its w is not finite"
        if not has_settings:
            return None, "no settings recorded (written by an older jaxhead)"
        recorded = json.loads(str(read_npz(path, [SETTINGS], max_bytes=1 << 20)[SETTINGS]))
    except (DataError, ValueError) as e:  # DataError: a damaged or forged file
        return None, f"unreadable ({type(e).__name__}: {e})"
    if not isinstance(recorded, dict):
        return None, "its settings are not a JSON object"
    return recorded, None


def changed_settings(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``["steps 500 -> 300", ...]`` for every setting that differs."""
    return [f"{k} {recorded.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(recorded) | set(now))
            if recorded.get(k) != now.get(k)]


def pending(targets, out: Path, pti: bool, run: dict[str, Any]
            ) -> tuple[list[Any], list[str]]:
    """``(targets to (re)do, one log line per stem redone)``. A stem whose npz is missing but
    has other outputs stops the run (``DataError``: an interrupted or different run)."""
    todo, redo = [], []
    for t in targets:
        files = outputs(out, t.stem, pti)
        if files[-1].exists():
            recorded, why = _recorded(files[-1])
            if recorded is not None:
                changes = changed_settings(recorded, stem_settings(run, t.camera))
                if not changes:
                    continue
                why = "made with other settings: " + ", ".join(changes)
            redo.append(f"{t.stem}: redoing, {why}")
            todo.append(t)
            continue
        for f in files[:-1]:
            if f.exists():
                raise DataError(f"{str(f)!r} exists but {files[-1].name} does not (an "
                                "interrupted or different run?): move it away or use another "
                                "--out; nothing was overwritten")
        todo.append(t)
    return todo, redo


__all__ = ["SETTINGS", "changed_settings", "outputs", "pending", "run_settings",
           "stem_settings", "write_npz"]
