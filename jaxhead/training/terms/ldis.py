"""LDIS (arXiv 2312.16837) as a step term: the relative distances between the tri-planes of
consecutive batches are kept. Its state is the previous batch's representations."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from jaxhead import losses
from jaxhead.training.sampling import conditioning_ws
from jaxhead.training.terms import Term
from jaxhead.utils.compile import jit

Array = jax.Array
sg = jax.lax.stop_gradient


class LdisState(NamedTuple):
    prev: Array  # trained generator's representation of the previous batch [B, ...]
    prev_frozen: Array  # frozen generator's


@dataclasses.dataclass(frozen=True)
class Ldis(Term):
    """LDIS (arXiv 2312.16837): keep the relative distances between the tri-planes of
    consecutive batches, ``weight * mean | |T'_i - T'_j|^2 / |T_i - T_j|^2 - 1 |`` (primes:
    trained generator). The first "previous batch" is rendered before training from a latent
    of its own (as the official code does)."""

    name: ClassVar[str] = "ldis"
    stateful: ClassVar[bool] = True

    def init(self, models: Any, frozen: dict[str, Any], root: Array) -> LdisState:
        G, c = models.G, self.config
        z0 = jax.random.normal(jax.random.fold_in(root, -1 & 0x7FFFFFFF),
                               (c.batch_size, G.z_dim))

        @jit
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


__all__ = ["Ldis", "LdisState"]
