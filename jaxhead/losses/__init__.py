"""Distillation objectives and regularizers (pure, jit/vmap-able functions)."""

from jaxhead.losses.distillation import (
    bsd_grad,
    cfg_eps,
    guidance_score,
    injected_loss,
    ld_grad,
    match_moments,
    mirror_loss,
    postprocess_grad,
    rank_weighting,
    sds_grad,
)
from jaxhead.losses.grid import make_grid, resize_and_grid, split_grid
from jaxhead.losses.objectives import (
    OBJECTIVES,
    Objective,
    objective_kwargs,
    register_objective,
)
from jaxhead.losses.regularizers import ldis, tweedie_mse

__all__ = ["OBJECTIVES", "Objective", "bsd_grad", "cfg_eps", "guidance_score", "injected_loss",
           "ld_grad", "ldis", "make_grid", "match_moments", "mirror_loss", "objective_kwargs",
           "postprocess_grad", "rank_weighting", "register_objective", "resize_and_grid",
           "sds_grad", "split_grid", "tweedie_mse"]
