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
def release_freed_memory_promptly() -> bool:
    """Set glibc's ``mmap`` and trim thresholds (process-wide, once); False where unavailable."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1)
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1) and ok
