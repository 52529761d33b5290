"""CPU-only program paths chosen by the platform a program is lowered for, not by the process.

Several of jaxhead's speed and memory choices are specific to XLA:CPU (weight gradients as
GEMMs, weight casts tied to their layer's input, blocked attention, cotangent-tied remat).
:func:`per_platform` picks them with ``jax.lax.platform_dependent``: both branches are traced
and only the one for the lowering platform is emitted (``jax.jit(f).trace(...).lower(
lowering_platforms=("cuda",))`` on a CPU host gives the GPU program). Each CPU branch runs in a
named scope from :data:`CPU_SCOPES`, so a lowered program shows whether it holds one
(tests/test_lowering.py). ``JAXHEAD_PLATFORM_PATHS=cpu`` / ``=accelerator`` forces either branch
on every platform (docs/accelerators.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax

# Named scopes of the CPU-only constructs (in a lowered program's op locations).
CPU_WGRAD = "cpu_wgrad_gemm"  # conv weight gradients as GEMMs (jaxhead.ops.upfirdn)
CPU_WEIGHT_TIE = "cpu_weight_tie"  # bf16 weight casts tied to the input (models.sd_layers)
CPU_ATTENTION = "cpu_chunked_attention"  # blocked attention, "auto" (models.sd_layers)
CPU_REMAT = "cpu_cotangent_remat"  # cotangent-tied rematerialisation (jaxhead.ops.remat)
CPU_SCOPES = (CPU_WGRAD, CPU_WEIGHT_TIE, CPU_ATTENTION, CPU_REMAT)
# Named scope of the accelerator attention (jax.nn.dot_product_attention).
ACCEL_ATTENTION = "accel_dot_product_attention"

FORCE_ENV = "JAXHEAD_PLATFORM_PATHS"
FORCE_CHOICES = ("", "cpu", "accelerator")


def forced() -> str:
    """``JAXHEAD_PLATFORM_PATHS``: "" (by lowering platform), "cpu" or "accelerator"."""
    v = os.environ.get(FORCE_ENV, "").strip().lower()
    if v not in FORCE_CHOICES:
        raise ValueError(f"{FORCE_ENV} must be one of {FORCE_CHOICES[1:]} or unset, not {v!r}")
    return v


def per_platform(*args: Any, cpu: Callable[..., Any], accelerator: Callable[..., Any]) -> Any:
    """``cpu(*args)`` in a program lowered for CPU, ``accelerator(*args)`` for any other
    platform (both must return the same shapes and dtypes; ``args`` positional pytrees)."""
    force = forced()
    if force == "cpu":
        return cpu(*args)
    if force == "accelerator":
        return accelerator(*args)
    return jax.lax.platform_dependent(*args, cpu=cpu, default=accelerator)
