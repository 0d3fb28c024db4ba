"""Make the C allocator give freed memory back to the OS at once (glibc).

numpy's temporaries come from ``malloc``. By default glibc raises its ``mmap`` threshold each time a
large block is freed (up to 32 MiB), after which large temporaries come from heaps that keep freed
memory, and every thread that allocates gets a heap of its own (the prefetch thread too). Freed
memory kept that way stays in the process's RSS, which the memory budget counts. A fixed threshold
(:data:`MMAP_THRESHOLD_BYTES`) keeps every large temporary in its own mapping, returned to the OS
when freed, and a low trim threshold shrinks heaps soon after. Elsewhere (not glibc) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

MMAP_THRESHOLD_BYTES = 64 * 1024
TRIM_THRESHOLD_BYTES = 256 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


@functools.cache
def release_freed_memory_promptly() -> bool:
    """Set glibc's ``mmap`` and trim thresholds (process-wide, once); False where unavailable."""
    mallopt = getattr(_libc(), "mallopt", None)  # (None where libc has no such function)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1)
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1) and ok


def give_back_freed_memory() -> bool:
    """Give the OS the pages of glibc's heaps that hold only freed memory (``malloc_trim(0)``),
    also those between blocks still in use, which a heap's trim threshold never reaches. Nothing in
    use is touched: RSS falls by memory that is already free. False where unavailable (not glibc).

    Many small allocations freed together (a tokenizer's build temporaries: ~5 MiB for SmolLM2's
    vocabulary) leave such pages behind."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
