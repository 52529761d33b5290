"""Hand the C heap's freed pages back to the operating system (glibc ``malloc_trim``).

XLA:CPU's compiler allocates and frees gigabytes of small objects while it compiles a large
step (about 2 GiB of the paper step's 10.7 GiB compile peak stays resident). glibc keeps such
freed heap pages mapped, so the process's resident memory stays at the compiler's peak, and the
step's buffers (allocated afterwards, mostly with ``mmap``) come on top of it: on a 24 GB
machine that is the difference between running the paper step and being killed for memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_free_host_memory() -> bool:
    """Return the C heap's free pages to the OS; True where this is possible (Linux, glibc).

    Call it after compiling a large jitted function and before running it. Costs milliseconds;
    changes no value. Elsewhere (macOS, musl, Windows) it does nothing and returns False.
    """
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


def resident_bytes() -> int | None:
    """The process's resident set size now (bytes; Linux ``/proc/self/statm``), else None."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")
