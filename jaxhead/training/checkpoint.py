"""Orbax checkpoints of the train state (trainable params, Adam state, step, LDIS planes, key).

Each saved step records the SHA-256 of its files (``<step>/jaxhead_sha256.json``). Restoring
takes the newest step that verifies and restores; a damaged newer step (a truncated or altered
file, or one orbax cannot read) is reported with the reason and moved, never deleted, to
``<workdir>/checkpoints_damaged/<step>`` (left in place, orbax would refuse to save the steps
the resumed run reaches).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxhead.errors import DataError

DIGEST_FILE = "jaxhead_sha256.json"
DAMAGED_DIR = "checkpoints_damaged"


def manager(workdir: str | os.PathLike, keep: int) -> ocp.CheckpointManager:
    path = os.path.abspath(os.path.join(os.fspath(workdir), "checkpoints"))
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                        enable_async_checkpointing=False)
    return ocp.CheckpointManager(path, options=opts)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(step_dir: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file of a saved step (the digest file excluded)."""
    return {str(p.relative_to(step_dir)): _sha256(p) for p in sorted(step_dir.rglob("*"))
            if p.is_file() and p.name != DIGEST_FILE}


def verify(step_dir: Path) -> str | None:
    """Why the step's files differ from the digests recorded at save, or None when they match
    (or the step predates the digests: then only orbax's own checks apply)."""
    path = step_dir / DIGEST_FILE
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        return f"{DIGEST_FILE} unreadable ({e})"
    for name, digest in recorded.items():
        f = step_dir / name
        if not f.is_file():
            return f"{name} is missing"
        if _sha256(f) != digest:
            return f"{name} differs from the SHA-256 recorded at save (truncated or altered)"
    return None


def save(mgr: ocp.CheckpointManager, state: Any) -> None:
    step = int(jax.device_get(state.step))
    mgr.save(step, args=ocp.args.StandardSave(state))
    mgr.wait_until_finished()
    if jax.process_index() == 0:
        from jaxhead.utils.params_io import write_text_atomic

        step_dir = Path(mgr.directory) / str(step)
        write_text_atomic(step_dir / DIGEST_FILE,
                          json.dumps(file_digests(step_dir), indent=1, sort_keys=True))


def _report(msg: str) -> None:
    print(f"jaxhead.train: {msg}", file=sys.stderr, flush=True)


def restore_latest(mgr: ocp.CheckpointManager, target: Any,
                   report: Callable[[str], None] = _report) -> Any | None:
    """The newest checkpoint that verifies, restored into ``target``'s structure/shardings, or
    None when there is none. Each newer damaged step is reported (``report``) with its reason
    and moved to ``<workdir>/checkpoints_damaged/``; if every step is damaged, ``DataError``
    lists them (nothing is moved or deleted)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    root = Path(mgr.directory)
    skipped: list[tuple[int, str]] = []
    mgr.reload()
    for step in sorted(mgr.all_steps(), reverse=True):
        reason = verify(root / str(step))
        if reason is None:
            try:
                state = mgr.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as e:  # noqa: BLE001 - orbax / tensorstore raise many types
                text = (str(e).strip().splitlines() or [""])[0].split(" See full")[0]
                reason = f"orbax could not restore it: {type(e).__name__}: {text}"[:300]
        if reason is not None:
            skipped.append((step, reason))
            continue
        if skipped:
            _set_aside(mgr, root, skipped, step, report)
        return state
    if skipped:
        raise DataError(f"no checkpoint in {str(root)!r} verifies: " + "; ".join(
            f"step {s}: {r}" for s, r in skipped) + " (nothing was moved or deleted)")
    return None


def _set_aside(mgr: ocp.CheckpointManager, root: Path, skipped: list[tuple[int, str]],
               restored: int, report: Callable[[str], None]) -> None:
    """Move the damaged steps newer than ``restored`` out of orbax's directory (process 0),
    then let the manager forget them."""
    dest = root.parent / DAMAGED_DIR
    for step, reason in skipped:
        target = dest / str(step)
        if jax.process_index() == 0:
            dest.mkdir(exist_ok=True)
            n = 1
            while target.exists():  # an earlier damaged copy of this step: keep both
                target = dest / f"{step}.{n}"
                n += 1
            os.replace(root / str(step), target)
        report(f"skipped checkpoint step {step} ({reason}); moved it to {target}")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxhead checkpoint set aside")
    mgr.reload()
    report(f"resuming from checkpoint step {restored}")
