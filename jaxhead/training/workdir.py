"""A run's working directory: refusing to resume with a different config, and keeping its
logs consistent with the restored checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxhead.errors import DataError, UsageError

# Fields that may differ between a run and its resumption: they do not change the trajectory
# (logging cadence, length, placement, memory strategy, this list itself).
RESUMABLE_CHANGES = (
    "steps", "workdir", "log_every", "preview_every", "preview_identities",
    "checkpoint_every", "keep_checkpoints", "final_turntable_identities",
    "final_turntable_frames", "distributed", "coordinator_address", "num_processes",
    "process_id", "num_devices", "mesh_axis", "remat", "split_backward",
    "models.shard_teacher", "max_skipped_steps", "resume_changed", "compilation_cache",
    "preview_ws", "style_bank.batch",
)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted field: (saved, new)}`` for every field that differs (JSON values)."""
    a, b = _flat(saved), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume(workdir: Path, config, defaults: dict[str, Any] | None = None) -> None:
    """Refuse, before anything is written, to continue the run in ``workdir`` with a config
    that changes its trajectory (prompt, objective, optimizer, models, batch, ...). Fields in
    :data:`RESUMABLE_CHANGES` and those named in ``config.resume_changed`` may change; a field
    the saved run lacks (added to jaxhead since) may hold its value in ``defaults`` (the base
    config as a JSON dict, e.g. ``configs/base.py``'s)."""
    path = workdir / "config.json"
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON ({e}); move it away to start a new run "
                         "in this workdir") from None
    new = json.loads(config.to_json_best_effort())
    allowed = set(RESUMABLE_CHANGES) | set(config.resume_changed)
    saved_keys, defaults = set(_flat(saved)), _flat(defaults or {})
    refused = {k: v for k, v in config_changes(saved, new).items()
               if not any(k == f or k.startswith(f + ".") for f in allowed)
               # a field added to jaxhead after the run was saved, left at its default
               and not (k not in saved_keys and k in defaults and defaults[k] == v[1])}
    if refused:
        lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise UsageError(
            f"workdir {str(workdir)!r} holds a run with a different config ({lines}). Use a "
            f"new --config.workdir, or continue anyway with --config.resume_changed="
            f"'({', '.join(repr(k) for k in refused)},)'")


def truncate_metrics(workdir: Path, step: int) -> int:
    """Drop ``metrics.jsonl`` rows logged after ``step`` (the restored checkpoint): a resumed
    run logs those steps again. A torn last line (a crash mid-write) is dropped as well; any
    other unreadable row is a :class:`DataError` naming the file and line. Returns the number
    of rows dropped (torn line included)."""
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_text(errors="replace").splitlines()
    keep = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            s = row.get("step", 0)
            if not isinstance(s, int):
                raise ValueError(f"step {s!r} is not an integer")
        except ValueError as e:  # JSONDecodeError is a ValueError
            if i == len(lines) - 1:  # torn by a crash mid-write: that step is logged again
                break
            raise DataError(f"{str(path)!r} line {i + 1} is not a metrics row ({e}); move the "
                            "file away to resume without it") from None
        if s <= step:
            keep.append(line)
    if len(keep) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(x + "\n" for x in keep))
        tmp.replace(path)
    return len(lines) - len(keep)
