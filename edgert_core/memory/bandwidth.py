"""The read bandwidth of the disk a model file lies on: measured once, kept in the user cache.

A plan that streams weights from disk under a memory limit can go no faster than the disk delivers
its streamed bytes (:func:`edgert_core.device_cost.disk_bound_tokens_per_s`). The figure is measured
on the model file itself, as a streamed model reads it (:func:`measure`): reads of about a stage's
run of tensors, going backwards within small windows as a stage's tensors do, in each read mode that
keeps weights out of the page cache (``direct``: ``O_DIRECT``; ``drop``: plain reads whose pages are
dropped after each). The faster mode is the one the engine streams in from disk: which one wins
depends on the disk and the kernel (on one 2-core x86 VM, SmolLM2's streamed stages read at 1.35
GB/s with ``O_DIRECT`` and 0.5 GB/s dropped; an earlier machine had it the other way round). The
one page-aligned buffer of :data:`READ_BYTES` is unmapped at the end.

The result is kept in ``$EDGERT_CACHE/device/read-bandwidth.json`` (the folder of the pulled models
and the prepared weights), keyed by the file's path, size and modification time, so a run measures a
file once (:func:`read_bandwidth`); a broken or foreign cache file is measured again and rewritten.
Nothing but that file is written, and only under the edge-rt cache.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgert_core.memory.io_stats import cached_bytes
from edgert_core.memory.reader import DIRECT_ALIGN, READ_MODES, open_direct
from edgert_core.pull import cache_dir

SAMPLE_BYTES = 64 * 2**20
"""Bytes read to measure (less for a smaller file)."""
READ_BYTES = 2**20
"""Bytes per read: about a streamed stage's run of tensors (SmolLM2's under a tight budget: 0.5 to
1.1 MiB)."""


@dataclass(frozen=True)
class Bandwidth:
    """A measured read bandwidth: bytes per second, the read mode that reached it (``direct`` or
    ``drop``; :mod:`edgert_core.memory.reader`) and whether it came from the cache file
    (``cached``)."""

    bytes_per_s: float
    how: str
    cached: bool


def cache_file() -> Path:
    return cache_dir() / "device" / "read-bandwidth.json"


def _key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def measure(path: Path, *, sample_bytes: int = SAMPLE_BYTES, read_bytes: int = READ_BYTES) -> Bandwidth:
    """Read up to ``sample_bytes`` of ``path`` (from its middle) as a streamed model is read, in
    both read modes that keep weights out of the page cache, and time each: ``direct``
    (``O_DIRECT``, where the file system allows it) and ``drop`` (plain reads, each one's pages
    dropped after it). The faster is the device's bandwidth and its ``how`` the read mode to stream
    in. The reads are ``read_bytes`` long and go backwards within windows of
    :data:`WINDOW_READS` (a stage's tensors lie in the file in another order than they are used),
    which is what the kernel's read-ahead cannot guess. Where the sample stays in the page cache
    after the drop (another process maps the file), plain reads would time memory: only
    ``direct`` is timed then. Raises ``OSError`` where the file cannot be read."""
    size = path.stat().st_size
    read_bytes = max(DIRECT_ALIGN, read_bytes // DIRECT_ALIGN * DIRECT_ALIGN)
    span = min(sample_bytes, size) // read_bytes * read_bytes
    if span == 0:  # a file smaller than one read: time one read of all of it
        span = read_bytes = max(DIRECT_ALIGN, size // DIRECT_ALIGN * DIRECT_ALIGN)
    start = max(0, (size - span) // 2) // DIRECT_ALIGN * DIRECT_ALIGN
    offsets = _engine_order(start, span, read_bytes)
    found: list[Bandwidth] = []
    buf = mmap.mmap(-1, read_bytes)  # page-aligned, as O_DIRECT wants
    try:
        direct, _ = open_direct(path)
        if direct is not None:
            try:
                found.append(Bandwidth(_timed(direct, buf, offsets, drop=False), "direct", False))
            finally:
                os.close(direct)
        fd = os.open(path, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, start, span, os.POSIX_FADV_DONTNEED)
                left = cached_bytes(path)  # the whole file's: an upper bound of the sample's
                if left is None or left < span // 10 or not found:
                    found.append(Bandwidth(_timed(fd, buf, offsets, drop=True), "drop", False))
                os.posix_fadvise(fd, start, span, os.POSIX_FADV_DONTNEED)
            elif not found:
                found.append(Bandwidth(_timed(fd, buf, offsets, drop=False), "cached", False))
        finally:
            os.close(fd)
    finally:
        buf.close()
    return max(found, key=lambda b: b.bytes_per_s)


#: Reads per window that :func:`measure` reads backwards.
WINDOW_READS = 4


def _engine_order(start: int, span: int, read_bytes: int) -> list[int]:
    """Offsets of ``[start, start + span)`` in ``read_bytes`` steps, each window of
    :data:`WINDOW_READS` reads taken last to first."""
    steps = list(range(start, start + span, read_bytes))
    return [o for w in range(0, len(steps), WINDOW_READS) for o in reversed(steps[w : w + WINDOW_READS])]


#: Passes over the sample per read mode; the fastest counts. A streamed model reads the same bytes
#: every token, and a disk's own cache (or a VM host's page cache) serves a range read again
#: faster than a cold one: the bound must hold for that steady state, not for a first pass (one
#: pass measured 0.69 GB/s where the runs then read their stages at 1.0-1.35 GB/s).
PASSES = 2


def _timed(fd: int, buf: mmap.mmap, offsets: list[int], *, drop: bool) -> float:
    """Bytes per second of reading ``len(buf)`` bytes at each of ``offsets`` of ``fd`` into
    ``buf``, dropping each read's pages after it where ``drop``: the fastest of :data:`PASSES`."""
    best = 0.0
    n = len(buf)
    for _ in range(PASSES):
        got = 0
        t0 = time.perf_counter()
        for offset in offsets:
            got += os.preadv(fd, [buf], offset)
            if drop:
                os.posix_fadvise(fd, offset, n, os.POSIX_FADV_DONTNEED)
        best = max(best, got / max(time.perf_counter() - t0, 1e-9))
    return best


def _load() -> dict[str, dict[str, object]]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(cache_file().read_text())
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if isinstance(v, dict)}
    return {}


def read_bandwidth(path: Path) -> Bandwidth | None:
    """The read bandwidth of the disk under ``path``: from the cache file when this file (path,
    size, mtime) was measured before, else measured now and kept. ``None`` where the file cannot be
    read (the run will say why when it reads it)."""
    try:
        key = _key(path)
    except OSError:
        return None
    known = _load()
    entry = known.get(key)
    if entry is not None:
        value, how = entry.get("bytes_per_s"), entry.get("how")
        if isinstance(value, (int, float)) and value > 0 and how in READ_MODES:
            return Bandwidth(float(value), how, cached=True)
    try:
        found = measure(path)
    except OSError:
        return None
    known[key] = {"bytes_per_s": found.bytes_per_s, "how": found.how,
                  "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _store(known)
    return found


def _store(known: dict[str, dict[str, object]]) -> None:
    """Write the cache file atomically (a temporary file renamed into place); a cache folder that
    cannot be written only costs a measurement next time."""
    target = cache_file()
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".read-bandwidth-")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(known, out, indent=1, sort_keys=True)
            os.replace(tmp, target)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
