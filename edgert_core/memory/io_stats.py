"""What this process read from disk, and dropping a file's pages from the page cache.

* ``read_bytes`` of ``/proc/self/io`` (Linux, task I/O accounting): the bytes this process (all its
  threads) caused to be fetched from storage, whether by ``read``/``pread`` or by faults on a file
  mapping. Reads served from the page cache do not count, so it is the disk traffic a device pays.
  ``None`` where the file is missing or unreadable (another OS, a kernel without
  ``CONFIG_TASK_IO_ACCOUNTING``, a sandbox that hides it).
* :func:`drop_page_cache` asks the kernel (``posix_fadvise(POSIX_FADV_DONTNEED)``) to drop a file's
  cached pages, so that the next process to read the file reads it from disk. Only clean pages that
  no process has mapped are dropped; a measured run is a fresh process, so that is enough.
  :func:`cached_bytes` says how much of a file stayed cached (another process that maps it keeps
  its pages there).
"""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

PROC_IO = Path("/proc/self/io")


def parse_proc_io(text: str) -> dict[str, int]:
    """The ``name: value`` counters of a ``/proc/<pid>/io`` text (lines that do not parse are
    skipped)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        value = value.strip()
        if sep and value.isdigit():
            out[name.strip()] = int(value)
    return out


def read_bytes(path: Path = PROC_IO) -> int | None:
    """Bytes this process has read from storage so far (``read_bytes`` of ``/proc/self/io``), or
    ``None`` where that is not available."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return parse_proc_io(text).get("read_bytes")


def drop_page_cache(path: str | Path) -> bool:
    """Drop the clean, unmapped cached pages of the file at ``path``. Returns False when the file
    cannot be opened or the OS has no ``posix_fadvise`` (then the next read may come from memory)."""
    if not hasattr(os, "posix_fadvise"):  # pragma: no cover - macOS, Windows
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def cached_bytes(path: str | Path) -> int | None:
    """How many bytes of the file at ``path`` are in the page cache now (``mincore`` on a fresh
    mapping, which touches no page), or ``None`` where that cannot be asked (not Linux, no libc)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # here: only a measured run asks

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        mmap_ = libc.mmap
        mmap_.restype = ctypes.c_void_p
        mmap_.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
        addr = mmap_(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            return None
        try:
            pages = -(-size // mmap.PAGESIZE)
            vec = (ctypes.c_ubyte * pages)()
            libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
            if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
                return None
            return min(sum(b & 1 for b in vec) * mmap.PAGESIZE, size)
        finally:
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
    finally:
        os.close(fd)
