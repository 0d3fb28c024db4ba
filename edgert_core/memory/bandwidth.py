"""The read bandwidth of the disk a model file lies on: measured once, kept in the user cache.

A plan that streams weights from disk under a memory limit can go no faster than the disk delivers
its streamed bytes (:func:`edgert_core.device_cost.disk_bound_tokens_per_s`). The figure is measured
on the model file itself, as the device reads it: :data:`SAMPLE_BYTES` from the file's middle in
reads of :data:`READ_BYTES` (a streamed stage's size) with ``O_DIRECT``, so neither the page cache
nor a cgroup's charge for it is involved; where the file system refuses ``O_DIRECT``, with plain
reads after asking the kernel to drop the range's cached pages (``posix_fadvise(DONTNEED)``), which
it does again afterwards. The one page-aligned buffer of :data:`READ_BYTES` is unmapped at the end.

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

from edgert_core.pull import cache_dir

SAMPLE_BYTES = 64 * 2**20
"""Bytes read to measure (less for a smaller file)."""
READ_BYTES = 4 * 2**20
"""Bytes per read: the size of a streamed stage (:data:`edgert_core.plan.DEFAULT_STAGE_BYTES`)."""
_ALIGN = 4096
_O_DIRECT: int | None = getattr(os, "O_DIRECT", None)


@dataclass(frozen=True)
class Bandwidth:
    """A measured read bandwidth: bytes per second, how (``"O_DIRECT"`` or ``"dropped cache"``)
    and whether it came from the cache file (``cached``)."""

    bytes_per_s: float
    how: str
    cached: bool


def cache_file() -> Path:
    return cache_dir() / "device" / "read-bandwidth.json"


def _key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def measure(path: Path, *, sample_bytes: int = SAMPLE_BYTES, read_bytes: int = READ_BYTES) -> Bandwidth:
    """Read up to ``sample_bytes`` of ``path`` from its middle in ``read_bytes`` reads, bypassing
    the page cache, and time it. Raises ``OSError`` where the file cannot be read."""
    size = path.stat().st_size
    read_bytes = max(_ALIGN, read_bytes // _ALIGN * _ALIGN)
    span = min(sample_bytes, size) // read_bytes * read_bytes
    if span == 0:  # a file smaller than one read: time one read of all of it
        span = read_bytes = max(_ALIGN, size // _ALIGN * _ALIGN)
    start = max(0, (size - span) // 2) // _ALIGN * _ALIGN
    buf = mmap.mmap(-1, read_bytes)  # page-aligned, as O_DIRECT wants
    try:
        fd, how = _open(path)
        try:
            if how != "O_DIRECT" and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, start, span, os.POSIX_FADV_DONTNEED)
            got = 0
            t0 = time.perf_counter()
            for offset in range(start, start + span, read_bytes):
                n = os.preadv(fd, [buf], offset)
                got += n
                if n < read_bytes:
                    break
            seconds = time.perf_counter() - t0
            if how != "O_DIRECT" and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, start, span, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    finally:
        buf.close()
    return Bandwidth(got / max(seconds, 1e-9), how, cached=False)


def _open(path: Path) -> tuple[int, str]:
    """The file opened for ``O_DIRECT`` reads where the file system allows one, else plainly."""
    if _O_DIRECT is not None:
        try:
            fd = os.open(path, os.O_RDONLY | _O_DIRECT)
        except OSError:
            pass
        else:
            probe = mmap.mmap(-1, _ALIGN)
            try:
                os.preadv(fd, [probe], 0)
                return fd, "O_DIRECT"
            except OSError:
                os.close(fd)
            finally:
                probe.close()
    return os.open(path, os.O_RDONLY), "dropped cache"


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
        if isinstance(value, (int, float)) and value > 0 and isinstance(how, str):
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
