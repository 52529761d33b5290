"""CPU-only program paths chosen by the platform a program is for, never by the process.

Several of jaxhead's speed and memory choices are specific to XLA:CPU (weight gradients as
GEMMs, weight casts tied to their layer's input, blocked attention, cotangent-tied remat).
:func:`per_platform` picks them once per traced program: for the platform set by
:func:`target` (``jaxhead.utils.compile.jit`` sets it from the devices of a call, or from
``lowering_platforms`` of ``.trace(...).lower(...)``), and where none is set (a plain
``jax.jit``) with ``jax.lax.platform_dependent``, whose lowering keeps only the branch of the
lowering platform. Each CPU branch runs in a named scope from :data:`CPU_SCOPES`, so a lowered
program shows whether it holds one (tests/test_lowering.py). ``JAXHEAD_PLATFORM_PATHS=cpu`` /
``=accelerator`` forces either branch (docs/accelerators.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
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


_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("jaxhead_platform",
                                                                    default=None)


def kind(platform: str | None) -> str | None:
    """"cpu", "accelerator" (any other platform: "gpu", "cuda", "rocm", "tpu") or None."""
    if platform is None:
        return None
    return "cpu" if platform.lower() == "cpu" else "accelerator"


@contextlib.contextmanager
def target(platform: str | None) -> Iterator[None]:
    """Functions traced inside are for ``platform`` ("cpu", "gpu", "cuda", "tpu", ...; None: both
    branches, chosen when lowering). A ``jax.jit`` caches its trace whatever this says: trace
    a jitted function for one platform only (``jaxhead.utils.compile.jit`` keeps one per
    platform)."""
    token = _TARGET.set(kind(platform))
    try:
        yield
    finally:
        _TARGET.reset(token)


def current() -> str | None:
    """The branch :func:`per_platform` takes now: "cpu", "accelerator" or None (by lowering
    platform), ``JAXHEAD_PLATFORM_PATHS`` first."""
    return forced() or _TARGET.get()


def per_platform(*args: Any, cpu: Callable[..., Any], accelerator: Callable[..., Any]) -> Any:
    """``cpu(*args)`` in a program for CPU, ``accelerator(*args)`` for any other platform (both
    must return the same shapes and dtypes; ``args`` positional pytrees of arrays)."""
    which = current()
    if which == "cpu":
        return cpu(*args)
    if which == "accelerator":
        return accelerator(*args)
    return jax.lax.platform_dependent(*args, cpu=cpu, default=accelerator)
