"""Stateful loss terms of the step: each owns its state through an ``init`` / ``__call__``
pair (the optax pattern); the train state only holds ``term_state[name]``.

A term is built from the config (:data:`TERMS`, present when its weight is > 0). ``init``
makes its first state before training; ``__call__(state, ctx)`` returns the weighted loss value
and the next state; ``state_sharding`` says how its state is laid out on the mesh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxhead import losses
from jaxhead.training.sampling import conditioning_ws

Array = jax.Array
sg = jax.lax.stop_gradient


class Term(Protocol):
    name: str

    def init(self, models: Any, frozen: dict[str, Any], root: Array) -> Any: ...

    def __call__(self, state: Any, ctx: Any) -> tuple[Array, Any]: ...

    def state_sharding(self, batch_sharding: Any, replicated: Any) -> Any: ...


class LdisState(NamedTuple):
    prev: Array  # trained generator's representation of the previous batch [B, ...]
    prev_frozen: Array  # frozen generator's


@dataclasses.dataclass(frozen=True)
class Ldis:
    """LDIS (arXiv 2312.16837): keep the relative distances between the tri-planes of
    consecutive batches, ``weight * mean | |T'_i - T'_j|^2 / |T_i - T_j|^2 - 1 |`` (primes:
    trained generator). The first "previous batch" is rendered before training from a latent
    of its own (as the official code does)."""

    weight: float
    config: Any

    name = "ldis"

    def init(self, models: Any, frozen: dict[str, Any], root: Array) -> LdisState:
        G, c = models.G, self.config
        z0 = jax.random.normal(jax.random.fold_in(root, -1 & 0x7FFFFFFF),
                               (c.batch_size, G.z_dim))

        @jax.jit
        def first(gp, z, key):
            ws = conditioning_ws(G, c, gp, z)
            return G.representation(gp, ws, noise_mode=c.noise_mode, rng=key)

        rep0 = first(frozen["generator"], z0, jax.random.fold_in(root, 0x7FFFFFFE))
        return LdisState(rep0, jnp.array(rep0, copy=True))

    def __call__(self, state: LdisState, ctx: Any) -> tuple[Array, LdisState]:
        fp = ctx.G.feature_planes
        value = self.weight * losses.ldis(fp(sg(state.prev)), fp(ctx.rep),
                                          fp(state.prev_frozen), fp(ctx.rep_frozen))
        return value, LdisState(sg(ctx.rep), ctx.rep_frozen)

    def state_sharding(self, batch_sharding: Any, replicated: Any) -> LdisState:
        return LdisState(batch_sharding, batch_sharding)


# term name -> (config field holding its weight, constructor(weight, config))
TERMS: dict[str, tuple[str, Callable[[float, Any], Term]]] = {
    "ldis": ("ldis_weight", Ldis),
}


def enabled_terms(config) -> list[Term]:
    """The stateful terms whose weight is > 0, in registry order."""
    out = []
    for _, (field, make) in TERMS.items():
        w = float(config[field])
        if w > 0:
            out.append(make(w, config))
    return out
