"""The step's loss terms and their registry.

A term is built from the config when its weight is > 0 (:func:`enabled_terms`, in registry
order) and owns its state through an ``init`` / ``__call__`` pair (the optax pattern); the
train state only holds ``term_state[name]``. Subclass :class:`Term` (a frozen dataclass of
``weight`` and ``config``) and override what the term needs; every hook does nothing by
default:

- ``__call__(state, ctx) -> (value, state)`` (required): in the step, the weighted loss value
  (or a dict of named values, each logged, their sum in the loss) and the next state;
- ``init(models, frozen, root)``: the first state, before training (``stateful`` terms);
- ``state_sharding(batch, replicated)``: how the state lies on the mesh;
- ``rows(ctx)``: rows of its own for the step's one teacher call (the answer is
  ``ctx.term_outs[name]``);
- ``validate(config) -> [str]`` (class method): config errors;
- ``missing(config) -> [str]`` (static): missing weights, with the convert command;
- ``load(config, demo)`` (static): its frozen networks, kept in ``frozen["terms"][name]``;
- ``check_inputs(config)``: reads its input files before the trainer writes anything;
- ``prepare(models, frozen, config, workdir, write=) -> dict``: arrays that need the loaded
  models or the workdir (the portrait's inversion), added to ``frozen["terms"][name]``.

Class attributes: ``name``; ``defaults`` (its ``config.terms.<name>`` section, ``weight`` 0 =
off); ``stateful``; ``needs_single`` (reads the single view's renders: its backward part goes
with that view). LDIS keeps its historical weight field ``ldis_weight``.

The built-in terms are listed in :data:`TERMS` by ``"module:Class"`` path and imported when
first asked for, so this module imports none of them (no import circle); a term from outside
the package is added with :func:`register_term`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, ClassVar

import jax
import ml_collections

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Term:
    """Base class of the step's loss terms (see the module docstring for the hooks)."""

    weight: float
    config: Any

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {"weight": 0.0}
    stateful: ClassVar[bool] = False
    needs_single: ClassVar[bool] = False

    def __call__(self, state: Any, ctx: Any) -> tuple[Any, Any]:
        raise NotImplementedError(f"term {self.name!r} does not define __call__")

    def init(self, models: Any, frozen: dict[str, Any], root: Array) -> Any:
        return None

    def state_sharding(self, batch_sharding: Any, replicated: Any) -> Any:
        return None

    def rows(self, ctx: Any) -> Any:
        return None

    @classmethod
    def validate(cls, config: Any) -> list[str]:
        return []

    @staticmethod
    def missing(config: Any) -> list[str]:
        return []

    @staticmethod
    def load(config: Any, demo: bool) -> Any:
        return None

    def check_inputs(self, config: Any) -> None:
        return None

    def prepare(self, models: Any, frozen: dict[str, Any], config: Any, workdir: Any, *,
                write: bool) -> dict[str, Any]:
        return {}

    @classmethod
    def asks_teacher(cls) -> bool:
        """Whether the term sends rows to the teacher (it overrides :meth:`rows`)."""
        return cls.rows is not Term.rows


# term name -> (config field holding its weight, the Term class or its "module:Class" path)
TERMS: dict[str, tuple[str, type[Term] | str]] = {
    "ldis": ("ldis_weight", "jaxhead.training.terms.ldis:Ldis"),
    **{n: (f"terms.{n}.weight", f"jaxhead.training.terms.regularizers:{c}") for n, c in (
        ("relative_distance", "RelativeDistance"),
        ("displacement_variance", "DisplacementVariance"),
        ("nada", "Nada"),
        ("identity", "Identity"),
        ("sgf_directional", "SgfDirectional"),
        ("sgf_reconstruction", "SgfReconstruction"))},
    "portrait": ("terms.portrait.weight", "jaxhead.training.terms.portrait:Portrait"),
}


def register_term(name: str, make: type[Term] | str) -> None:
    """Add a term configured under ``config.terms.<name>`` (its class attribute ``defaults``:
    the fields of that section, ``weight`` 0 = off): a :class:`Term` subclass or its
    ``"module:Class"`` path."""
    TERMS[name] = (f"terms.{name}.weight", make)


def term_class(name: str) -> type[Term]:
    """The class of registered term ``name`` (imported on first use)."""
    field, make = TERMS[name]
    if isinstance(make, str):
        module, _, attr = make.partition(":")
        make = getattr(importlib.import_module(module), attr)
        TERMS[name] = (field, make)
    return make


def _get(config, dotted: str) -> Any:
    v = config
    for part in dotted.split("."):
        v = v[part]
    return v


def enabled_terms(config) -> list[Term]:
    """The terms whose weight is > 0, in registry order."""
    out = []
    for name, (field, _) in list(TERMS.items()):
        w = float(_get(config, field))
        if w > 0:
            out.append(term_class(name)(w, config))
    return out


def terms_config() -> ml_collections.ConfigDict:
    """``config.terms``: one section per registered ``terms.<name>`` term, its ``defaults``
    (``weight`` 0: off)."""
    c = ml_collections.ConfigDict()
    for name, (field, _) in list(TERMS.items()):
        if field.startswith("terms."):
            c[name] = ml_collections.ConfigDict(dict(term_class(name).defaults))
    return c


def missing_dir(path: str, what: str, hint: str, field: str, weight: str) -> list[str]:
    """``[]`` when ``path`` holds converted weights (params + config), else one message
    naming it, the command that makes it (``hint`` with ``DST``) and how to turn it off."""
    from jaxhead.utils.params_io import is_converted

    if is_converted(path):
        return []
    return [f"{what}: {path}\n    {hint.replace('DST', str(path))}\n    (or point {field} at the "
            f"converted folder, or set --config.{weight}=0)"]


__all__ = ["TERMS", "Term", "enabled_terms", "missing_dir", "register_term", "term_class",
           "terms_config"]
