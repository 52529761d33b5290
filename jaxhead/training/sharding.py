"""Where arrays live: the device mesh, the train state's and the frozen params' shardings.

Identities (the batch) are split over the mesh's data axis; parameters are replicated, or, with
``models.shard_teacher``, the frozen teacher's large tensors are split across devices.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_mesh(config) -> Mesh:
    """1-D mesh over ``num_devices`` devices (0: the most that split the batch); with several
    processes, all devices of all processes."""
    devices = jax.devices()
    if not config.num_devices:
        n = max(d for d in range(1, len(devices) + 1) if config.batch_size % d == 0)
        devices = devices[:n]
    else:
        if config.num_devices > len(devices):
            raise ValueError(f"num_devices={config.num_devices} but only {len(devices)} "
                             "devices are available")
        devices = devices[: config.num_devices]
    if jax.process_count() > 1 and len(devices) != jax.device_count():
        from jaxhead.errors import UsageError

        raise UsageError(f"{jax.process_count()} processes: the mesh must use all "
                         f"{jax.device_count()} devices (batch_size={config.batch_size} a "
                         f"multiple of it, num_devices=0 or {jax.device_count()})")
    return Mesh(np.array(devices), (config.mesh_axis,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, axis: str) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(axis))


def teacher_sharding(x: Any, mesh: Mesh, axis: str) -> NamedSharding:
    """Where one frozen teacher tensor lives with ``models.shard_teacher``: split along its
    largest axis divisible by the device count (tensors under 64 Ki values replicated)."""
    n = mesh.devices.size
    dims = [i for i, d in enumerate(x.shape) if d % n == 0 and d >= n]
    if x.size < 1 << 16 or not dims:
        return replicated(mesh)
    i = max(dims, key=lambda k: x.shape[k])
    spec = [None] * len(x.shape)
    spec[i] = axis
    return NamedSharding(mesh, PartitionSpec(*spec))


def frozen_shardings(frozen: dict[str, Any], mesh: Mesh, config) -> dict[str, Any]:
    """The frozen params' shardings (same tree): replicated, the teacher's large tensors split
    across devices with ``models.shard_teacher``."""
    out = jax.tree.map(lambda _: replicated(mesh), frozen)
    if config.models.shard_teacher and mesh.devices.size > 1 and "teacher" in frozen:
        out["teacher"] = jax.tree.map(lambda x: teacher_sharding(x, mesh, config.mesh_axis),
                                      frozen["teacher"])
    return out


def place_frozen(frozen: dict[str, Any], mesh: Mesh, config) -> dict[str, Any]:
    """Frozen params on the mesh, each tensor put once where it lives (a sharded teacher is never
    replicated first, so no device ever holds all of it)."""
    return jax.device_put(frozen, frozen_shardings(frozen, mesh, config))


def constrain_batch(x: jax.Array, mesh: Mesh | None, axis: str) -> jax.Array:
    """Split the leading (identity) axis of ``x`` over the mesh's data axis."""
    if mesh is None:
        return x
    spec = PartitionSpec(axis, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
