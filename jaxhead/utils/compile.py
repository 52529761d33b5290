"""``jit``: ``jax.jit`` with the XLA compiler options jaxhead compiles its programs with.

On CPU, XLA (jaxlib 0.10) hands dots *and* convolutions to YNNPACK by default. Its direct
convolutions are slower than XLA's own (Eigen) convolutions on every shape of PanoHead and
the SD UNet measured here (2-core x86, fp32): a 3x3 convolution at 8 x 8 x 1280 takes 53 ms
with YNNPACK and 24 ms with Eigen (oneDNN in torch: 36 ms), at 64 x 64 x 320 90 vs 76 ms, and
the gradient at 512 x 512 x 128 3.6 vs 1.7 s. jaxhead's CPU programs therefore keep YNNPACK for
dot products only (the SD UNet forward 11.5 -> 9.9 s, the PanoHead forward 2.9 -> 2.3 s; see
docs/performance.md). The options are per program (``compiler_options`` of ``jax.jit``), so
nothing process-wide changes and other backends compile as before; a program traced here and
lowered for another platform (``.trace(...).lower(lowering_platforms=("cuda",))``) carries
none. Programs over several devices keep jaxlib's defaults (see :func:`_plain_needed`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

CPU_CONV_CHOICES = ("eigen", "ynnpack")
_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"


@functools.cache
def compiler_options(backend: str | None = None, cpu_conv: str = "eigen") -> dict[str, str]:
    """The options for a program compiled for ``backend`` (default: JAX's default backend).

    ``cpu_conv``: "eigen" (XLA's convolutions, YNNPACK for dots only) or "ynnpack" (jaxlib's
    default). Empty (the defaults) off CPU, for "ynnpack", and where this jaxlib does not know
    the option (checked once by compiling a tiny program with it).
    """
    if cpu_conv not in CPU_CONV_CHOICES:
        raise ValueError(f"cpu_conv must be one of {CPU_CONV_CHOICES}, not {cpu_conv!r}")
    backend = backend or jax.default_backend()
    if backend != "cpu" or cpu_conv == "ynnpack":
        return {}
    opts = {_YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
    try:
        jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(compiler_options=opts)
    except Exception:  # an older / newer jaxlib without this option: its defaults
        return {}
    return opts


def _plain_needed(args: Any, kwargs: Any) -> bool:
    """True under another trace (JAX takes compiler options from the outermost ``jit`` only)
    or for a program over several devices: with 4 host devices, the sharded train step gave
    run-to-run different results on XLA's convolutions (ld_grid -0.01162 / -0.01140 against
    -0.01125 on one device), and matches one device with jaxlib's defaults."""
    for x in jax.tree.leaves((args, kwargs)):
        if isinstance(x, jax.core.Tracer):
            return True
        if isinstance(x, jax.sharding.Mesh) and x.size > 1:
            return True
        if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
            return True
    return False


class _Jitted:
    """A function jitted twice: with :func:`compiler_options` for top-level single-device
    calls, and plainly (jaxlib's defaults) under another trace or over several devices."""

    def __init__(self, fun: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.top = jax.jit(fun, compiler_options=compiler_options(), **kwargs)
        self.plain = jax.jit(fun, **kwargs)
        functools.update_wrapper(self, fun)

    def _pick(self, args: Any, kwargs: Any) -> Any:
        return self.plain if _plain_needed(args, kwargs) else self.top

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._pick(args, kwargs)(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        return self._pick(args, kwargs).lower(*args, **kwargs)

    def trace(self, *args: Any, **kwargs: Any) -> _Traced:
        """The traced program; its ``lower(lowering_platforms=...)`` for a platform other than
        CPU carries no CPU compiler options."""
        return _Traced(self, args, kwargs)

    def _cache_size(self) -> int:
        """Compiled variants of both (as ``jax.jit``'s, for tests of recompilation)."""
        return self.top._cache_size() + self.plain._cache_size()


class _Traced:
    """``jax.jit(...).trace(...)`` of :class:`_Jitted`: traced (once, on first use) with the
    CPU options where the program is lowered for CPU (or the default backend is CPU and no
    platform is named), plainly for other lowering platforms."""

    def __init__(self, jitted: _Jitted, args: Any, kwargs: Any) -> None:
        self._jitted, self._args, self._kwargs = jitted, args, kwargs
        self._traced: dict[bool, Any] = {}

    def _get(self, plain: bool) -> Any:
        if plain not in self._traced:
            j = self._jitted
            fn = j.plain if plain else j._pick(self._args, self._kwargs)
            self._traced[plain] = fn.trace(*self._args, **self._kwargs)
        return self._traced[plain]

    def lower(self, *, lowering_platforms: tuple[str, ...] | None = None, **kw: Any) -> Any:
        names = lowering_platforms or (jax.default_backend(),)
        plain = any(p != "cpu" for p in names)
        return self._get(plain).lower(lowering_platforms=lowering_platforms, **kw)

    def __getattr__(self, name: str) -> Any:  # jaxpr, out_info, ... of the traced program
        return getattr(self._get(jax.default_backend() != "cpu"), name)


def jit(fun: Callable[..., Any], **kwargs: Any) -> Any:
    """``jax.jit(fun, **kwargs)`` compiled with :func:`compiler_options` when called at top
    level on one device (under another ``jit`` the outer program's options apply; over several
    devices jaxlib's defaults). Call it where a program is built, not at import: it asks JAX
    for its backend."""
    return _Jitted(fun, kwargs)
