"""The objective registry: score-distillation objectives selectable by name.

An objective is a pure function

    fn(eps_uncond, eps_cond, *, noise, alpha_bar, guidance_scale, **kw) -> grad

of the teacher's noise predictions ``[B, h, w, 4]`` (NHWC latents), the injected ``noise``
(same shape), ``alphas_cumprod`` at the sampled step (``[B]``) and the guidance scale, returning
``dL/dlatents`` (same shape). If it accepts ``score_transform``, the rank weighting is handed to
it to apply to its score; otherwise the rank weighting acts on its output.

The trainer selects one with ``--config.objective=NAME`` and tunes it with
``--config.objective_kw.KEY=VALUE``. Keyword arguments reach the function in this order of
precedence (last wins): ``guidance_scale=config.guidance_scale``, the defaults registered with
the objective, the ``objective_kw`` values that are set. Register a new one with

    from jaxhead.losses import register_objective
    register_objective("my_obj", my_grad_fn, guidance_scale=10.0)

before the config is loaded (e.g. at the top of your config file); validation, the step and
``objective_kw``'s fields all read this registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from jaxhead.losses.distillation import bsd_grad, ld_grad, sds_grad

Array = jax.Array

# Keyword arguments the step supplies itself (not tunable through objective_kw).
STEP_ARGS = ("noise", "alpha_bar", "score_transform")


class Objective(NamedTuple):
    """A registered objective: the gradient function and its default keyword arguments."""

    fn: Callable[..., Array]
    defaults: Mapping[str, Any]

    @property
    def keywords(self) -> tuple[str, ...]:
        """Tunable keyword-only parameters of ``fn`` (those with a default), in order."""
        ps = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in ps if p.kind is p.KEYWORD_ONLY and p.name not in STEP_ARGS
                     and p.default is not p.empty)

    @property
    def takes_score_transform(self) -> bool:
        return "score_transform" in inspect.signature(self.fn).parameters


OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, fn: Callable[..., Array], **defaults: Any) -> None:
    """Add (or replace) objective ``name``; ``defaults`` override ``fn``'s own defaults."""
    params = inspect.signature(fn).parameters
    for req in ("noise", "alpha_bar"):
        if req not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise TypeError(f"objective {name!r}: {fn.__name__} must accept the keyword "
                            f"argument {req!r} (use `del {req}` if unused)")
    unknown = sorted(set(defaults) - set(Objective(fn, {}).keywords))
    if unknown:
        raise TypeError(f"objective {name!r}: {unknown} are not keyword parameters of "
                        f"{fn.__name__}")
    OBJECTIVES[name] = Objective(fn, dict(defaults))


def objective_kwargs(name: str, overrides: Mapping[str, Any],
                     guidance_scale: float) -> dict[str, Any]:
    """The keyword arguments objective ``name`` is called with (see the module docstring).

    ``overrides`` holds ``objective_kw``; entries that are ``None`` (unset) are skipped, and
    a set entry the objective does not take raises ``ValueError``."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r} (registered: {sorted(OBJECTIVES)})")
    obj = OBJECTIVES[name]
    kw: dict[str, Any] = {}
    if "guidance_scale" in obj.keywords:
        kw["guidance_scale"] = guidance_scale
    kw.update(obj.defaults)
    set_ = {k: v for k, v in overrides.items() if v is not None}
    bad = sorted(set(set_) - set(obj.keywords))
    if bad:
        raise ValueError(f"objective_kw {bad} are not parameters of objective {name!r} "
                         f"(it takes {list(obj.keywords)})")
    kw.update(set_)
    return kw


def objective_kw_fields() -> dict[str, Any]:
    """``{keyword: example default}`` over every registered objective: the fields of
    ``config.objective_kw`` (each unset by default; its type is that of the default)."""
    out: dict[str, Any] = {}
    for obj in OBJECTIVES.values():
        sig = inspect.signature(obj.fn).parameters
        for k in obj.keywords:
            out.setdefault(k, obj.defaults.get(k, sig[k].default))
    return out


register_objective("ld", ld_grad, form="official")
register_objective("sds", sds_grad, form="official")  # the stylization code's SDS switch
register_objective("bsd", bsd_grad)
