"""Orbax checkpoints of the train state (trainable params, Adam state, step, LDIS planes, key)."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(workdir: str | os.PathLike, keep: int) -> ocp.CheckpointManager:
    path = os.path.abspath(os.path.join(os.fspath(workdir), "checkpoints"))
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                        enable_async_checkpointing=False)
    return ocp.CheckpointManager(path, options=opts)


def save(mgr: ocp.CheckpointManager, state: Any) -> None:
    step = int(jax.device_get(state.step))
    mgr.save(step, args=ocp.args.StandardSave(state))
    mgr.wait_until_finished()


def restore_latest(mgr: ocp.CheckpointManager, target: Any) -> Any | None:
    """Latest checkpoint restored into ``target``'s structure/shardings, or None."""
    step = mgr.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return mgr.restore(step, args=ocp.args.StandardRestore(abstract))
