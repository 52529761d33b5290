"""Freed C-heap pages go back to the OS (what lets the paper step run after its compile)."""

import ctypes
import ctypes.util
import sys

import pytest

from jaxhead.utils.host_memory import release_free_host_memory, resident_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_freed_heap_pages_leave_the_resident_set():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, n = 96 * 1024, 2048  # below glibc's mmap threshold: heap blocks, 192 MiB in all
    blocks = [libc.malloc(size) for _ in range(n)]
    assert all(blocks)
    for b in blocks:
        ctypes.memset(b, 1, size)  # resident
    for b in blocks[:-1]:  # the last block pins the heap's top: free() alone cannot shrink it
        libc.free(b)
    before = resident_bytes()
    assert release_free_host_memory()
    after = resident_bytes()
    libc.free(blocks[-1])
    assert before - after > 128 * 2**20, (before, after)
