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

Each program is also traced for its platform (:func:`jaxhead.ops.platform.target`): that of the
call's devices, or of ``lowering_platforms``; so CPU-only paths are in CPU programs only, and a
CPU program holds no platform selection (docs/accelerators.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxhead.ops import platform as platform_lib

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


def _call_platform(args: Any, kwargs: Any) -> str | None:
    """The platform a call runs on: under another trace the one that trace is for
    (:func:`jaxhead.ops.platform.current`), else that of its arrays' or mesh's devices, else
    JAX's default backend."""
    leaves = jax.tree.leaves((args, kwargs))
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return platform_lib.current()
    for x in leaves:
        if isinstance(x, jax.sharding.Mesh):
            return x.devices.flat[0].platform
        if isinstance(x, jax.Array):
            return next(iter(x.sharding.device_set)).platform
    return jax.default_backend()


def _for_platform(fun: Callable[..., Any], platform: str | None) -> Callable[..., Any]:
    """``fun`` traced for ``platform`` (:func:`jaxhead.ops.platform.target`)."""

    @functools.wraps(fun)
    def traced_for(*args: Any, **kwargs: Any) -> Any:
        with platform_lib.target(platform):
            return fun(*args, **kwargs)

    return traced_for


class _Jitted:
    """A function jitted once per (platform kind, options): traced for the platform it runs on
    or is lowered for (:mod:`jaxhead.ops.platform`), with :func:`compiler_options` for
    top-level single-device CPU calls, plainly (jaxlib's defaults) under another trace, over
    several devices and for other platforms."""

    def __init__(self, fun: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self._fun, self._kwargs = fun, kwargs
        self._variants: dict[tuple[str | None, bool], Any] = {}
        functools.update_wrapper(self, fun)

    def _variant(self, platform: str | None, with_options: bool) -> Any:
        kind = platform_lib.kind(platform)
        with_options = with_options and kind == "cpu"
        key = (kind, with_options)
        if key not in self._variants:
            opts = compiler_options("cpu") if with_options else None
            self._variants[key] = jax.jit(_for_platform(self._fun, kind),
                                          compiler_options=opts, **self._kwargs)
        return self._variants[key]

    def _pick(self, args: Any, kwargs: Any) -> Any:
        return self._variant(_call_platform(args, kwargs), not _plain_needed(args, kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._pick(args, kwargs)(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        return self._pick(args, kwargs).lower(*args, **kwargs)

    def trace(self, *args: Any, **kwargs: Any) -> _Traced:
        """The traced program; ``lower(lowering_platforms=...)`` traces it for those platforms
        (one trace per kind: CPU / accelerator) and carries CPU compiler options for CPU only."""
        return _Traced(self, args, kwargs)

    @property
    def top(self) -> Any:
        """The variant of a top-level call on the default backend (one device)."""
        return self._variant(jax.default_backend(), True)

    @property
    def plain(self) -> Any:
        """The variant of a call on the default backend with jaxlib's default options."""
        return self._variant(jax.default_backend(), False)

    def _cache_size(self) -> int:
        """Compiled variants (as ``jax.jit``'s, for tests of recompilation)."""
        return sum(v._cache_size() for v in self._variants.values())


class _Traced:
    """``jax.jit(...).trace(...)`` of :class:`_Jitted`, traced on first use for the platforms
    it is lowered for (``lowering_platforms``; default: those of the call)."""

    def __init__(self, jitted: _Jitted, args: Any, kwargs: Any) -> None:
        self._jitted, self._args, self._kwargs = jitted, args, kwargs
        self._traced: dict[tuple[str | None, bool], Any] = {}

    def _get(self, platform: str | None, with_options: bool) -> Any:
        key = (platform_lib.kind(platform), with_options and platform_lib.kind(platform) == "cpu")
        if key not in self._traced:
            fn = self._jitted._variant(platform, with_options)
            self._traced[key] = fn.trace(*self._args, **self._kwargs)
        return self._traced[key]

    def lower(self, *, lowering_platforms: tuple[str, ...] | None = None, **kw: Any) -> Any:
        options = not _plain_needed(self._args, self._kwargs)
        if lowering_platforms is None:
            traced = self._get(_call_platform(self._args, self._kwargs), options)
        else:
            kinds = {platform_lib.kind(p) for p in lowering_platforms}
            one = lowering_platforms[0] if len(kinds) == 1 else None  # several: chosen by XLA
            traced = self._get(one, options and kinds == {"cpu"})
        return traced.lower(lowering_platforms=lowering_platforms, **kw)

    def __getattr__(self, name: str) -> Any:  # jaxpr, out_info, ... of the call's trace
        return getattr(self._get(_call_platform(self._args, self._kwargs),
                                 not _plain_needed(self._args, self._kwargs)), name)


def jit(fun: Callable[..., Any], **kwargs: Any) -> Any:
    """``jax.jit(fun, **kwargs)`` compiled with :func:`compiler_options` when called at top
    level on one device (under another ``jit`` the outer program's options apply; over several
    devices jaxlib's defaults), traced for the platform it runs on or is lowered for (one
    ``jax.jit`` per platform kind: CPU / accelerator)."""
    return _Jitted(fun, kwargs)
