"""Compile and time a jitted training step; its compile time, seconds per step and memory.

Shared by ``benchmarks.train_step`` and ``benchmarks.portrait_step``.
"""

from __future__ import annotations

import re
import resource
import time
from typing import Any

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_COLLECTIVE_RE = re.compile(r"=\s*(\([^=]*?\)|[\w\[\],{}:#* ]+?)\s+(" + "|".join(COLLECTIVES)
                            + r")(-start)?\(")
_ARRAY_RE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


def collectives(hlo_text: str) -> dict[str, tuple[int, int]]:
    """``{kind: (count, bytes)}`` of the collectives of a compiled program's HLO text
    (``compiled.as_text()``): bytes of each one's result (of an async ``-start``, its last
    array: the gathered / reduced value); ``-done`` halves are not counted again."""
    out: dict[str, tuple[int, int]] = {}
    for m in _COLLECTIVE_RE.finditer(hlo_text):
        arrays = [(t, d) for t, d in _ARRAY_RE.findall(m.group(1)) if t in _BYTES]
        if m.group(3):
            arrays = arrays[-1:]
        size = sum(_BYTES[t] * _prod(d) for t, d in arrays)
        n, b = out.get(m.group(2), (0, 0))
        out[m.group(2)] = (n + 1, b + size)
    return out


def _prod(dims: str) -> int:
    n = 1
    for d in dims.split(","):
        if d:
            n *= int(d)
    return n


def time_step(step: Any, state: Any, frozen: Any, *, steps: int,
              compile_only: bool = False) -> dict:
    """Lower + compile ``step(state, frozen) -> (state, metrics)`` and run it ``steps`` times.

    The compiler's freed heap is handed back to the OS before the first step, as the trainer
    does. Returns ``compile_s``, ``step_s`` (the fastest step; NaN without steps), ``steps``
    (every step's seconds), ``peak_bytes`` with ``peak_kind`` ("RSS": the process's max RSS on
    CPU; "device": the device's peak bytes in use), ``device``, and the compiled program's
    ``temp_bytes`` / ``arg_bytes`` / ``output_bytes`` (XLA's plan, per device) and
    ``collectives`` (:func:`collectives`).
    """
    import jax

    from jaxhead.utils.host_memory import release_free_host_memory

    t0 = time.perf_counter()
    compiled = step.lower(state, frozen).compile()
    t_compile = time.perf_counter() - t0
    release_free_host_memory()  # the compiler's freed heap (~2 GiB for the paper step)
    times = []
    for _ in range(0 if compile_only else steps):
        t0 = time.perf_counter()
        state, m = compiled(state, frozen)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    mem = compiled.memory_analysis()
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    peak = (stats or {}).get("peak_bytes_in_use") or \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"compile_s": t_compile, "step_s": min(times) if times else float("nan"),
            "steps": times, "peak_bytes": peak, "peak_kind": "device" if stats else "RSS",
            "device": dev.device_kind, "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
            "arg_bytes": getattr(mem, "argument_size_in_bytes", None),
            "output_bytes": getattr(mem, "output_size_in_bytes", None),
            "collectives": collectives(compiled.as_text())}
