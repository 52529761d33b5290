"""Resuming from a damaged workdir: a truncated or altered latest checkpoint falls back to the
newest one that verifies (reported, moved aside, never deleted), and a torn last line of
``metrics.jsonl`` (a crash mid-write) is dropped. Crafted here on tiny states: no training."""

import json
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxhead.errors import DataError
from jaxhead.training import checkpoint
from jaxhead.training.workdir import truncate_metrics


@flax.struct.dataclass
class _State:
    step: jax.Array
    w: jax.Array


def _w(step: int) -> jax.Array:
    return jax.random.normal(jax.random.key(step), (64, 64))


def _saved(workdir: Path, steps=(1, 2)) -> Path:
    mgr = checkpoint.manager(workdir, 3)
    for s in steps:
        checkpoint.save(mgr, _State(jnp.int32(s), _w(s)))
    return workdir / "checkpoints"


def _damage(step_dir: Path, how: str) -> Path:
    """Truncate or flip one byte of the step's largest array file; returns it."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != checkpoint.DIGEST_FILE]
    big = max(files, key=lambda p: p.stat().st_size)
    b = bytearray(big.read_bytes())
    if how == "truncated":
        b = b[: len(b) // 2]
    else:
        b[len(b) // 2] ^= 0xFF
    big.write_bytes(bytes(b))
    return big


@pytest.mark.parametrize("how, digests", [("truncated", True), ("flipped", True),
                                          ("truncated", False)])
def test_damaged_latest_checkpoint_falls_back_to_the_newest_that_verifies(tmp_path, how,
                                                                          digests):
    """(a flipped byte without the recorded digests restored wrong values silently; a
    truncated file stopped the run with orbax's traceback)"""
    root = _saved(tmp_path)
    if not digests:  # a checkpoint written before the digests were recorded
        (root / "2" / checkpoint.DIGEST_FILE).unlink()
    _damage(root / "2", how)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    said: list[str] = []
    mgr = checkpoint.manager(tmp_path, 3)
    state = checkpoint.restore_latest(mgr, _State(jnp.int32(0), jnp.zeros((64, 64))),
                                      report=said.append)
    assert int(state.step) == 1
    np.testing.assert_array_equal(np.asarray(state.w), np.asarray(_w(1)))
    assert "skipped checkpoint step 2" in said[0] and "checkpoints_damaged" in said[0], said
    assert ("differs from the SHA-256" if digests else "orbax could not restore") in said[0]
    assert said[-1] == "resuming from checkpoint step 1"
    # nothing deleted: step 2 moved aside, file for file
    after = sorted(str(p.relative_to(tmp_path)).replace("checkpoints_damaged/", "checkpoints/")
                   for p in tmp_path.rglob("*") if p.is_file())
    assert after == before
    # the resumed run can save step 2 again (orbax skips steps <= a step it still lists)
    checkpoint.save(mgr, _State(jnp.int32(2), state.w))
    assert mgr.all_steps() == [1, 2] and checkpoint.verify(root / "2") is None


def test_every_checkpoint_damaged_is_one_error_and_moves_nothing(tmp_path):
    root = _saved(tmp_path)
    for s in ("1", "2"):
        _damage(root / s, "flipped")
    with pytest.raises(DataError, match=r"no checkpoint .* verifies: step 2: .*; step 1: "):
        checkpoint.restore_latest(checkpoint.manager(tmp_path, 3),
                                  _State(jnp.int32(0), jnp.zeros((64, 64))), report=print)
    assert sorted(p.name for p in root.iterdir()) == ["1", "2"]
    assert not (tmp_path / checkpoint.DAMAGED_DIR).exists()


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    rows = [json.dumps({"step": s, "loss": 0.5}) for s in (1, 2, 3)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(rows) + '\n{"step": 4, "lo')  # killed mid-write
    assert truncate_metrics(tmp_path, 3) == 1
    assert path.read_text() == "".join(r + "\n" for r in rows)
    path.write_text("\n".join(rows) + '\n{"step": 4, "lo')
    assert truncate_metrics(tmp_path, 2) == 2  # the restored step's rows, as before
    assert path.read_text() == "".join(r + "\n" for r in rows[:2])


def test_damaged_metrics_row_before_the_end_names_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    text = '{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n'
    path.write_text(text)
    with pytest.raises(DataError, match=r"metrics.jsonl' line 2 is not a metrics row"):
        truncate_metrics(tmp_path, 3)
    assert path.read_text() == text
