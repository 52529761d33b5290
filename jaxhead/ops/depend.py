"""Scheduling dependencies XLA keeps: a value that cannot be computed before another exists.

XLA removes ``jax.lax.optimization_barrier`` before it schedules (on CPU at least), and its
scheduler computes values that depend on parameters or constants only (weight casts, zero
buffers) as early as it likes, keeping them live far longer than needed. Subtracting an exact
zero computed from another array makes a value depend on that array, so it is computed only
once the array exists.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def tie_to(x: jax.Array, dep: jax.Array) -> jax.Array:
    """``x`` (floating or integer) unchanged, computed only after ``dep`` (any shape, floating)
    exists.

    Subtracts ``isnan(dep[0]) * 0.0``: a float product (0 or 1 times +0), which XLA does not fold
    away (it does fold integer products with zero); it is +0, never NaN, and ``x - (+0)`` is ``x``
    for every float, -0 included (``x + 0`` would turn -0 into +0).
    """
    zero = jnp.isnan(jnp.ravel(dep)[0]).astype(jnp.float32) * 0.0
    return x - zero.astype(x.dtype)
