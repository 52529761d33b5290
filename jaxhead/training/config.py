"""Validation of the training config: one pass, before any compute, every problem listed.

The allowed values are read from the registries they select from (objectives, views'
controls, optimizers), so registering a new one makes it valid. The validated config is frozen
(``ml_collections.FrozenConfigDict``) and read where it is used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import ml_collections

from jaxhead import losses
from jaxhead.errors import UsageError
from jaxhead.training.controls import CONTROLS
from jaxhead.training.optim import OPTIMIZERS
from jaxhead.training.terms import enabled_terms
from jaxhead.training.views import VIEWS

# objective "none": no score distillation at all (no view, no teacher); the enabled terms are
# the whole loss (the single-portrait mode, configs/portrait.py)
NO_OBJECTIVE = "none"


def _choices() -> dict[str, tuple[str, ...]]:
    return {
        "objective": tuple(losses.OBJECTIVES) + (NO_OBJECTIVE,),
        "alpha_index": ("step", "timestep"),
        "noise_mode": ("random", "const", "none"), "grid.mode": ("before_sr", "after_sr"),
        "optimizer.name": tuple(OPTIMIZERS), "models.teacher_dtype": ("float32", "bfloat16"),
        "demo_teacher": ("gaussian", "random_sd"),
    }


def get(config, dotted: str) -> Any:
    v = config
    for part in dotted.split("."):
        v = v[part]
    return v


def _non_finite(config, prefix: str = "") -> list[str]:
    """Dotted names of float fields (or float entries of tuples) that are NaN or infinite."""
    out = []
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
            out += _non_finite(v, name + ".")
        elif isinstance(v, float) and not math.isfinite(v):
            out.append(f"{name}={v}")
        elif isinstance(v, (tuple, list)) and any(isinstance(x, float) and not math.isfinite(x)
                                                  for x in v):
            out.append(f"{name}={tuple(v)}")
    return out


def validate_config(config) -> ml_collections.FrozenConfigDict:
    """Raise :class:`UsageError` listing every out-of-range value; return the frozen config."""
    errs = [f"{f} is not finite" for f in _non_finite(config)]
    for key, allowed in _choices().items():
        if get(config, key) not in allowed:
            errs.append(f"{key}={get(config, key)!r} (choose from {allowed})")
    no_objective = config.objective == NO_OBJECTIVE
    if not config.prompt and not no_objective:
        errs.append("prompt is empty (use a style config, or --config.prompt='...')")
    if config.preview_every < 0:
        errs.append("preview_every must be >= 0 (0 disables previews)")
    if config.preview_ws and not Path(config.preview_ws).exists():
        errs.append(f"preview_ws={config.preview_ws!r} does not exist (a directory of "
                    "<name>.npz files with 'w' [1, num_ws, w_dim])")
    for key in ("steps", "batch_size", "log_every", "checkpoint_every",
                "keep_checkpoints", "num_inference_steps", "max_skipped_steps"):
        if int(get(config, key)) < 1:
            errs.append(f"{key} must be >= 1, got {get(config, key)}")
    if config.num_devices < 0:
        errs.append(f"num_devices must be >= 0 (0: as many as split the batch), got "
                    f"{config.num_devices}")
    if config.num_processes < 0:
        errs.append(f"num_processes must be >= 0 (0: auto-detect), got {config.num_processes}")
    elif config.process_id < -1 or config.num_processes and \
            config.process_id >= config.num_processes:
        errs.append(f"process_id={config.process_id} with num_processes="
                    f"{config.num_processes} (ids are 0 .. num_processes - 1; -1: auto-detect)")
    if not 0.0 <= config.truncation_psi <= 1.0:
        errs.append(f"truncation_psi must be in [0, 1], got {config.truncation_psi}")
    if config.truncation_cutoff < 0:
        errs.append(f"truncation_cutoff must be >= 0, got {config.truncation_cutoff}")
    o = config.optimizer
    if not o.lr > 0:
        errs.append(f"optimizer.lr must be > 0, got {o.lr}")
    if not (0 <= o.b1 < 1 and 0 <= o.b2 < 1):
        errs.append(f"optimizer.b1 and b2 must be in [0, 1), got {o.b1}, {o.b2}")
    if not o.eps > 0:
        errs.append(f"optimizer.eps must be > 0, got {o.eps}")
    for view in VIEWS:  # the fields the built-in views share (a new view may lack some)
        v = config[view]
        if "t_range" in v:
            lo, hi = v.t_range
            if not 0.0 <= lo < hi <= 1.0:
                errs.append(f"{view}.t_range must satisfy 0 <= lo < hi <= 1, got {(lo, hi)}")
        if v.get("step_range") and not (len(v.step_range) == 2 and all(
                isinstance(s, int) for s in v.step_range)
                and 0 <= v.step_range[0] <= v.step_range[1] < config.num_inference_steps):
            errs.append(f"{view}.step_range must be () or (lo, hi) integers with 0 <= lo <= "
                        f"hi < num_inference_steps={config.num_inference_steps}, got "
                        f"{tuple(v.step_range)}")
        for key in ("yaw_range", "pitch_range"):
            if key in v and not v[key][0] <= v[key][1]:
                errs.append(f"{view}.{key} must satisfy lo <= hi, got {tuple(v[key])}")
        if "control" in v and v.control not in CONTROLS:
            errs.append(f"{view}.control={v.control!r} (choose from {tuple(CONTROLS)})")
    if len(config.single.rank_weights) > 4:
        errs.append("single.rank_weights has more than 4 entries (latents have 4 channels)")
    for key in ("guidance_scale", "controlnet_scale", "grad_div", "grad_clamp"):
        if not get(config, key) > 0:
            errs.append(f"{key} must be > 0")
    for key in ("tweedie_weight", "ldis_weight", "lpips_weight", "grid.weight",
                "single.base_weight", "single.mirror_weight"):
        if not get(config, key) >= 0:
            errs.append(f"{key} must be >= 0, got {get(config, key)}")
    for name in config.terms:
        if not config.terms[name].weight >= 0:
            errs.append(f"terms.{name}.weight must be >= 0, got {config.terms[name].weight}")
    for term in enabled_terms(config):
        errs += term.validate(config)
    if config.get("reference") and not config.terms.portrait.weight > 0:
        errs.append(f"reference={config.reference!r} is set but terms.portrait.weight=0 (the "
                    "single-portrait mode: configs/portrait.py)")
    for key in ("style_bank.count", "style_bank.steps", "style_bank.batch"):
        if int(get(config, key)) < 1:
            errs.append(f"{key} must be >= 1, got {get(config, key)}")
    if not config.style_bank.guidance_scale > 0:
        errs.append(f"style_bank.guidance_scale must be > 0, got "
                    f"{config.style_bank.guidance_scale}")
    if not 0.0 <= config.blend.weight <= 1.0:
        errs.append(f"blend.weight must be in [0, 1], got {config.blend.weight}")
    if config.blend.enabled and not config.blend.prompt:
        errs.append("blend.prompt is empty (the neutral prompt of the blend)")
    tr = config.objective_kw.get("t_range")
    if tr is not None and not (len(tr) == 2 and 0.0 <= tr[0] < tr[1] <= 1.0):
        errs.append(f"objective_kw.t_range must be (lo, hi) with 0 <= lo < hi <= 1, got {tr}")
    if config.objective in losses.OBJECTIVES:
        try:
            losses.objective_kwargs(config.objective, config.objective_kw,
                                    config.guidance_scale)
        except ValueError as e:
            errs.append(str(e))
    n_dev = config.num_devices or 1
    if no_objective:
        on = [f"{v}.enabled" for v in VIEWS if config[v].enabled]
        if on:
            errs.append(f"objective=none distills nothing, but {', '.join(on)} (score views) "
                        f"{'is' if len(on) == 1 else 'are'} on: set "
                        + " ".join(f"--config.{f}=False" for f in on))
        if not enabled_terms(config):
            errs.append("objective=none and no term has a weight > 0: nothing to train (e.g. "
                        "configs/portrait.py: terms.portrait)")
    elif not any(config[v].enabled for v in VIEWS):
        errs.append(f"no view is enabled ({', '.join(f'{v}.enabled' for v in VIEWS)} are "
                    "all False): nothing to distill")
    if config.batch_size % n_dev:
        errs.append(f"batch_size={config.batch_size} is not divisible by the {n_dev} devices "
                    f"of the data axis")
    if errs:
        raise UsageError("invalid config: " + "; ".join(errs))
    return ml_collections.FrozenConfigDict(config)


def objective_kw_config() -> ml_collections.ConfigDict:
    """``config.objective_kw``: one unset field per keyword of the registered objectives
    (typed by its default), so ``--config.objective_kw.KEY=VALUE`` works on a locked config."""
    c = ml_collections.ConfigDict()
    for k, default in losses.objectives.objective_kw_fields().items():
        c[k] = ml_collections.config_dict.placeholder(type(default))
    return c
