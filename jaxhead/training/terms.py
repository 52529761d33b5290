"""Stateful loss terms of the step: each owns its state through an ``init`` / ``__call__``
pair (the optax pattern); the train state only holds ``term_state[name]``.

A term is built from the config (:data:`TERMS`, present when its weight is > 0). ``init``
makes its first state before training; ``__call__(state, ctx)`` returns the weighted loss value
and the next state; ``state_sharding`` says how its state is laid out on the mesh. A term with
``stateful = False`` keeps no state (``init`` is not called, it gets ``state=None``).

Optional hooks: ``rows(ctx) -> TeacherRows | None`` asks the teacher for rows of its own in the
step's one teacher call (the answer is ``ctx.term_outs[name]``); ``validate(config) -> [str]``
adds config errors; ``missing(config) -> [str]`` lists missing weights (with the convert
command); ``load(config, demo) -> params`` loads its frozen networks into
``frozen["terms"][name]``; ``check_inputs(config)`` reads the term's input files before the
trainer writes anything (one ``DataError`` line each); ``prepare(models, frozen, config,
workdir, write=) -> dict`` adds arrays that need the loaded models or the workdir (the
portrait's inversion) to ``frozen["terms"][name]``. ``__call__`` may return a dict of named
values instead of one value (each logged; their sum enters the loss).

The zoo's terms (:mod:`jaxhead.training.regularizer_terms`) are configured under
``config.terms.<name>`` (``weight`` and their options, made from each term's ``defaults`` by
:func:`terms_config`); LDIS keeps its historical field ``ldis_weight``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import ml_collections

from jaxhead import losses
from jaxhead.training.sampling import conditioning_ws
from jaxhead.utils.compile import jit

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
    stateful = True

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


# term name -> (config field holding its weight, constructor(weight, config))
TERMS: dict[str, tuple[str, Callable[[float, Any], Term]]] = {
    "ldis": ("ldis_weight", Ldis),
}


def register_term(name: str, make: Callable[[float, Any], Term]) -> None:
    """Add a term configured under ``config.terms.<name>`` (its class attribute ``defaults``:
    the fields of that section, ``weight`` 0 = off)."""
    TERMS[name] = (f"terms.{name}.weight", make)


def _get(config, dotted: str) -> Any:
    v = config
    for part in dotted.split("."):
        v = v[part]
    return v


def enabled_terms(config) -> list[Term]:
    """The terms whose weight is > 0, in registry order."""
    out = []
    for _, (field, make) in TERMS.items():
        w = float(_get(config, field))
        if w > 0:
            out.append(make(w, config))
    return out


def terms_config() -> ml_collections.ConfigDict:
    """``config.terms``: one section per registered ``terms.<name>`` term, its ``defaults``
    (``weight`` 0: off)."""
    c = ml_collections.ConfigDict()
    for name, (field, make) in TERMS.items():
        if field.startswith("terms."):
            c[name] = ml_collections.ConfigDict(dict(make.defaults))
    return c


from jaxhead.training import regularizer_terms  # noqa: E402,F401,I001  (the zoo's terms)
from jaxhead.training import portrait  # noqa: E402,F401,I001  (terms.portrait)
