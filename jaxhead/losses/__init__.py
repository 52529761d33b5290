"""Distillation objectives and regularizers (pure, jit/vmap-able functions)."""

from jaxhead.losses.distillation import (
    NFSD_NEGATIVE,
    blend_eps,
    bsd_grad,
    cfg_eps,
    csd_grad,
    guidance_score,
    injected_loss,
    ld_grad,
    match_moments,
    mirror_loss,
    nfsd_grad,
    postprocess_grad,
    rank_weighting,
    sds_grad,
    sds_weight,
)
from jaxhead.losses.grid import make_grid, resize_and_grid, split_grid
from jaxhead.losses.objectives import (
    OBJECTIVES,
    Objective,
    objective_kwargs,
    objective_prompts,
    objective_t_range,
    register_objective,
)
from jaxhead.losses.regularizers import ldis, tweedie_mse

__all__ = ["NFSD_NEGATIVE", "OBJECTIVES", "Objective", "blend_eps", "bsd_grad", "cfg_eps",
           "csd_grad", "guidance_score", "injected_loss", "ld_grad", "ldis", "make_grid",
           "match_moments", "mirror_loss", "nfsd_grad", "objective_kwargs", "objective_prompts",
           "objective_t_range", "postprocess_grad", "rank_weighting", "register_objective",
           "resize_and_grid", "sds_grad", "sds_weight", "split_grid", "tweedie_mse"]
