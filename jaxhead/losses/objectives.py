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
    register_objective("my_obj", my_grad_fn, guidance_scale=10.0, t_range=(0.02, 0.98))

Besides keyword defaults an objective may register

* ``t_range``: its timestep range as a fraction of the DDIM steps (0 = the noisiest step, the
  views' own convention); it replaces every view's ``t_range`` (a view's ``step_range``, when
  set, still wins). ``objective_kw.t_range`` overrides it; objectives without one use the
  views' ranges.
* ``alpha_index``: ``"timestep"`` to get ``alpha_bar = alphas_cumprod[timestep]`` whatever
  ``config.alpha_index`` says (whose default ``"step"`` reproduces the stylization code's
  indexing by the DDIM step index, right for ``ld``/``sds``/``bsd`` only); the objectives
  ported from other code bases (``sds_dreamfusion``, ``csd``, ``nfsd``) register it.
* ``prompts``: ``{key: default text}`` of extra prompts it needs predictions for. The step
  adds teacher rows (same ``x_t``, noise, control) conditioned on each and hands the
  conditional predictions to the function as ``eps_prompts={key: [B, h, w, 4]}``;
  ``objective_kw.<key>`` overrides the text.

A function that accepts ``timestep`` gets each row's diffusion timestep ``[B]`` (int); one
that accepts ``latents`` gets the clean latents ``z`` the rows were noised from (``[B, h, w,
4]``, no gradient); one that accepts ``style_stats`` gets the style bank's channel statistics
``{"mean": [4], "cov": [4, 4]}`` (``frozen["style"]``: the trainer samples the bank once per
workdir, :mod:`jaxhead.training.style_bank`).

before the config is loaded (e.g. at the top of your config file); validation, the step and
``objective_kw``'s fields all read this registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from jaxhead.losses.distillation import (
    NFSD_NEGATIVE,
    bsd_grad,
    csd_grad,
    ld_grad,
    nfsd_grad,
    sds_grad,
)
from jaxhead.losses.sas import sas_grad

Array = jax.Array

# Keyword arguments the step supplies itself (not tunable through objective_kw).
STEP_ARGS = ("noise", "alpha_bar", "score_transform", "timestep", "eps_prompts", "latents",
             "style_stats")
T_RANGE = "t_range"  # the objective_kw field overriding an objective's timestep range


class Objective(NamedTuple):
    """A registered objective: the gradient function and its default keyword arguments."""

    fn: Callable[..., Array]
    defaults: Mapping[str, Any]
    t_range: tuple[float, float] | None = None  # fraction of the DDIM steps; None: the views'
    prompts: Mapping[str, str] = {}  # extra prompt key -> default text (eps_prompts)
    alpha_index: str | None = None  # "timestep" / "step": which abar it gets; None: config's

    @property
    def keywords(self) -> tuple[str, ...]:
        """Tunable keyword-only parameters of ``fn`` (those with a default), in order."""
        ps = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in ps if p.kind is p.KEYWORD_ONLY and p.name not in STEP_ARGS
                     and p.default is not p.empty)

    @property
    def takes_score_transform(self) -> bool:
        return "score_transform" in inspect.signature(self.fn).parameters

    def takes(self, name: str) -> bool:
        """``fn`` has a parameter ``name`` (e.g. ``timestep``, ``eps_prompts``)."""
        return name in inspect.signature(self.fn).parameters


OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, fn: Callable[..., Array], *,
                       t_range: tuple[float, float] | None = None,
                       prompts: Mapping[str, str] | None = None,
                       alpha_index: str | None = None, **defaults: Any) -> None:
    """Add (or replace) objective ``name``; ``defaults`` override ``fn``'s own defaults;
    ``t_range`` and ``prompts`` as in the module docstring."""
    params = inspect.signature(fn).parameters
    for req in ("noise", "alpha_bar"):
        if req not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise TypeError(f"objective {name!r}: {fn.__name__} must accept the keyword "
                            f"argument {req!r} (use `del {req}` if unused)")
    unknown = sorted(set(defaults) - set(Objective(fn, {}).keywords))
    if unknown:
        raise TypeError(f"objective {name!r}: {unknown} are not keyword parameters of "
                        f"{fn.__name__}")
    if prompts and "eps_prompts" not in params:
        raise TypeError(f"objective {name!r}: {fn.__name__} registers prompts but does not "
                        "accept eps_prompts")
    if t_range is not None and not 0.0 <= t_range[0] < t_range[1] <= 1.0:
        raise ValueError(f"objective {name!r}: t_range must satisfy 0 <= lo < hi <= 1, got "
                         f"{t_range}")
    if alpha_index not in (None, "step", "timestep"):
        raise ValueError(f"objective {name!r}: alpha_index must be None, 'step' or "
                         f"'timestep', got {alpha_index!r}")
    OBJECTIVES[name] = Objective(fn, dict(defaults),
                                 None if t_range is None else tuple(map(float, t_range)),
                                 dict(prompts or {}), alpha_index)


def objective_kwargs(name: str, overrides: Mapping[str, Any],
                     guidance_scale: float) -> dict[str, Any]:
    """The keyword arguments objective ``name`` is called with (see the module docstring).

    ``overrides`` holds ``objective_kw``; entries that are ``None`` (unset) are skipped, and
    a set entry the objective does not take (a keyword or prompt of another objective)
    raises ``ValueError``; ``t_range`` and the objective's own prompts are not passed."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r} (registered: {sorted(OBJECTIVES)})")
    obj = OBJECTIVES[name]
    kw: dict[str, Any] = {}
    if "guidance_scale" in obj.keywords:
        kw["guidance_scale"] = guidance_scale
    kw.update(obj.defaults)
    set_ = {k: v for k, v in overrides.items() if v is not None and k != T_RANGE
            and k not in obj.prompts}
    bad = sorted(set(set_) - set(obj.keywords))
    if bad:
        raise ValueError(f"objective_kw {bad} are not parameters of objective {name!r} "
                         f"(it takes {list(obj.keywords)})")
    kw.update(set_)
    return kw


def objective_t_range(name: str, overrides: Mapping[str, Any]) -> tuple[float, float] | None:
    """The timestep range (fraction of the DDIM steps) of objective ``name``:
    ``objective_kw.t_range`` if set, else its registered range, else None (the views')."""
    tr = overrides.get(T_RANGE)
    if tr is None:
        tr = OBJECTIVES[name].t_range
    return None if tr is None else (float(tr[0]), float(tr[1]))


def objective_prompts(name: str, overrides: Mapping[str, Any]) -> dict[str, str]:
    """``{key: text}`` of the extra prompts objective ``name`` needs (texts from
    ``objective_kw`` where set)."""
    return {k: overrides.get(k) or text for k, text in OBJECTIVES[name].prompts.items()}


def objective_kw_fields() -> dict[str, Any]:
    """``{keyword: example default}`` over every registered objective: the fields of
    ``config.objective_kw`` (each unset by default; its type is that of the default)."""
    out: dict[str, Any] = {T_RANGE: (0.0, 1.0)}
    for obj in OBJECTIVES.values():
        sig = inspect.signature(obj.fn).parameters
        for k in obj.keywords:
            out.setdefault(k, obj.defaults.get(k, sig[k].default))
        for k, text in obj.prompts.items():
            out.setdefault(k, text)
    return out


register_objective("ld", ld_grad, form="official")
register_objective("sds", sds_grad, form="official")  # the stylization code's SDS switch
register_objective("bsd", bsd_grad)
# DreamFusion (Poole et al. 2022): w(t) (eps_cfg - eps), w = 1 - abar, CFG 100, t ~ U(0.02, 0.98)
register_objective("sds_dreamfusion", sds_grad, form="standard", guidance_scale=100.0,
                   t_range=(0.02, 0.98), alpha_index="timestep")
# CSD (Yu et al. 2023; official code CVMI-Lab/Classifier-Score-Distillation, its Stable
# Diffusion config csd-sd-refine.yaml): grad = (1 - abar) (eps_c - eps_u), guidance coefficient
# 1 (cond_scale 1), t ~ U(0.02, 0.5) of the 1000 timesteps = fraction (0.5, 0.98) of the DDIM
# steps here (timesteps 481..21)
register_objective("csd", csd_grad, guidance_scale=1.0, t_range=(0.5, 0.98),
                   alpha_index="timestep")
# NFSD (Katzir et al., ICLR 2024): s = 7.5, t_switch 200, its negative prompt (the paper);
# w(t) and the t range are not stated there: threestudio's SDS defaults (1 - abar, U(0.02, 0.98))
register_objective("nfsd", nfsd_grad, guidance_scale=7.5, t_range=(0.02, 0.98),
                   alpha_index="timestep", prompts={"negative_quality_prompt": NFSD_NEGATIVE})
# Style Aligned Sampling (Jiang et al., "Fast 3D Stylized Gaussian Portrait Generation From a
# Single Image With Style Aligned Sampling Loss", Sec. IV-A.3): CFG 50, t ~ U(0.02, 0.98) (its
# first 1000 iterations), abar at the timestep (x0_hat must invert the noising)
register_objective("sas", sas_grad, guidance_scale=50.0, weighting="sds", t_range=(0.02, 0.98),
                   alpha_index="timestep")
