"""Rematerialisation that XLA:CPU cannot undo: the recomputation waits for the cotangent.

``jax.checkpoint`` saves a function's inputs and recomputes its activations in the backward
pass, with optimisation barriers meant to keep the recomputation there. XLA:CPU removes those
barriers before it schedules, and its scheduler then runs the recomputation as soon as the
saved inputs exist, early in the forward pass: every recomputed activation is live at once and
for as long as without remat, plus the copy (a 16-layer tanh stack in 4 checkpointed blocks
planned 84 MB of temporaries against 71 MB without remat; 34 MB with :func:`checkpoint`).
Here the backward makes every input of the recomputation (floats, integers, PRNG keys)
depend on the output's cotangent (:func:`jaxhead.ops.depend.tie_to`), so it can only run
when its backward does. Values and gradients are those of ``fn``.

:func:`remat` picks per lowering platform: :func:`checkpoint` for CPU, ``jax.checkpoint`` with
:data:`ACCELERATOR_POLICY` for GPU / TPU (whose schedulers keep the recomputation late).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxhead.ops import platform
from jaxhead.ops.depend import tie_to


def _inexact(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


def _tie_any(x: Any, dep: jax.Array) -> Any:
    """``tie_to`` for floating and integer arrays and PRNG keys (their key data)."""
    if not hasattr(x, "dtype"):
        return x
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(tie_to(jax.random.key_data(x), dep),
                                        impl=jax.random.key_impl(x))
    if jnp.issubdtype(x.dtype, jnp.inexact) or jnp.issubdtype(x.dtype, jnp.integer):
        return tie_to(x, dep)
    return x


def checkpoint(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its activations recomputed in the backward pass once the cotangent of its
    output exists. Arguments: arrays and pytrees of arrays (positional or keyword; PRNG keys
    and integer arrays get no cotangent); ``fn`` must not close over traced values."""

    @jax.custom_vjp
    def call(args: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        a, kw = args
        return fn(*a, **kw)

    def fwd(args):
        return call(args), args

    def bwd(args, g):
        deps = [x for x in jax.tree.leaves(g) if _inexact(x)]
        if deps:  # every input (floats, integers, keys) waits for the cotangent
            with jax.named_scope(platform.CPU_REMAT):
                args = jax.tree.map(lambda x: _tie_any(x, deps[0]), args)
        _, vjp = jax.vjp(lambda t: fn(*t[0], **t[1]), args)
        return vjp(g)

    call.defvjp(fwd, bwd)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return call((args, kwargs))

    return wrapped


# What ``jax.checkpoint`` may keep from the forward pass on GPU / TPU: nothing but the inputs,
# as :func:`checkpoint` on CPU (the rematerialised renders' largest activations are the
# tri-plane samples and their MLP's dots, which are what remat is there not to hold).
ACCELERATOR_POLICY = jax.checkpoint_policies.nothing_saveable


def remat(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` rematerialised for the platform its program is lowered for: :func:`checkpoint`
    (cotangent-tied) for CPU, ``jax.checkpoint(fn, policy=ACCELERATOR_POLICY)`` otherwise
    (:func:`jaxhead.ops.platform.per_platform`). Arguments as for :func:`checkpoint`."""
    cpu_fn = checkpoint(fn)
    acc_fn = jax.checkpoint(fn, policy=ACCELERATOR_POLICY)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return platform.per_platform(
            (args, kwargs), cpu=lambda a: cpu_fn(*a[0], **a[1]),
            accelerator=lambda a: acc_fn(*a[0], **a[1]))

    return wrapped
