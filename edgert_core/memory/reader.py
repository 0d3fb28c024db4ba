"""Read byte ranges of a model file into memory the caller owns (a pool buffer), without the file's
pages counting in the process's RSS.

Pages of a file that the process has ``mmap``-ed and touched are part of its RSS until unmapped, so a
streamed model must not read its weights through a mapping of the whole file (``np.memmap``,
``safetensors.safe_open``, ``gguf.GGUFReader`` data): the RSS would grow to the model's size however
small the pool is. :class:`FileRangeReader` copies with positional reads (``os.preadv``) straight into
the caller's buffer; the only memory it touches is that buffer. The kernel may keep the file in its
page cache, which is not RSS and is given up under memory pressure; ``drop_cache=True`` asks the
kernel to drop the range after reading (``posix_fadvise(POSIX_FADV_DONTNEED)``), for devices where
the page cache competes with the run.

When a mapping cannot be avoided (for example, a parser that maps the file to read its header),
:func:`drop_mapped_pages` gives the touched pages of a read-only file mapping back.
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgert_core.errors import ModelError

DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024
"""Bytes per read call; with ``drop_cache`` the page cache is dropped after each chunk."""

_HAVE_PREADV = hasattr(os, "preadv")
_HAVE_FADVISE = hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED")


class FileRangeReader:
    """Positional reads of one file, opened once. Thread-safe: reads carry their own offset, so the
    engine's main thread and its prefetch thread may read at the same time.

    ``size`` is the file's length when opened. Close it (or use it as a context manager) when done;
    :meth:`close` waits for reads in progress.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        drop_cache: bool = False,
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes
        self.drop_cache = drop_cache and _HAVE_FADVISE
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as err:
            raise ModelError(
                f"Cannot open model file {self.path}: {err.strerror}. Check the path and its "
                "permissions."
            ) from err
        self.size = os.fstat(self._fd).st_size
        self._state = threading.Condition(threading.Lock())
        self._active = 0
        self._closed = False
        self._seek_lock = threading.Lock()  # only where os.preadv is missing

    @property
    def closed(self) -> bool:
        return self._closed

    def read_into(
        self, offset: int, nbytes: int, out: NDArray[Any], *, what: str = ""
    ) -> NDArray[np.uint8]:
        """Copy bytes ``[offset, offset + nbytes)`` of the file into the start of ``out``.

        ``out`` is any C-contiguous writable array of at least ``nbytes`` bytes (typically a pool
        buffer, ``uint8 [n]``); its bytes past ``nbytes`` are left alone. Returns ``uint8 [nbytes]``,
        a view of ``out``. ``what`` names the data in errors (``"tensor 'blk.0.attn_q.weight'"``).
        Raises :class:`ModelError` naming the file and the range when the file ends before
        ``offset + nbytes`` or cannot be read.
        """
        if offset < 0 or nbytes < 0:
            raise ValueError(f"offset and nbytes must not be negative, got {offset} and {nbytes}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a C-contiguous, writable array")
        if out.nbytes < nbytes:
            raise ValueError(f"out holds {out.nbytes} bytes, fewer than the {nbytes} to read")
        target: NDArray[np.uint8] = out.reshape(-1).view(np.uint8)[:nbytes]
        if offset + nbytes > self.size:
            raise self._truncated(offset, nbytes, what, self.size)
        self._enter()
        try:
            with target.data as view:
                pos = 0
                while pos < nbytes:
                    n = min(self.chunk_bytes, nbytes - pos)
                    try:
                        got = self._pread_into(view[pos : pos + n], offset + pos)
                    except OSError as err:
                        raise ModelError(
                            f"Cannot read bytes {offset}..{offset + nbytes}{_of(what)} of model "
                            f"file {self.path}: {err.strerror}."
                        ) from err
                    if got == 0:  # the file shrank after it was opened
                        raise self._truncated(offset, nbytes, what, offset + pos)
                    if self.drop_cache:
                        os.posix_fadvise(self._fd, offset + pos, got, os.POSIX_FADV_DONTNEED)
                    pos += got
        finally:
            self._leave()
        return target

    def read_bytes(self, offset: int, nbytes: int, *, what: str = "") -> bytes:
        """Bytes ``[offset, offset + nbytes)`` as a new ``bytes`` object, for small reads (headers)."""
        buf = np.empty(nbytes, dtype=np.uint8)
        return self.read_into(offset, nbytes, buf, what=what).tobytes()

    def drop_page_cache(self, offset: int = 0, nbytes: int = 0) -> bool:
        """Ask the kernel to drop its cached pages of the range (``nbytes=0``: to the end of the
        file). Returns False where ``posix_fadvise`` is missing."""
        if not _HAVE_FADVISE:
            return False
        self._enter()
        try:
            os.posix_fadvise(self._fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
        finally:
            self._leave()
        return True

    def _pread_into(self, view: memoryview, offset: int) -> int:
        if _HAVE_PREADV:
            return os.preadv(self._fd, [view], offset)
        with self._seek_lock:  # pragma: no cover - platforms without preadv (Windows)
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.readv(self._fd, [view])

    def _truncated(self, offset: int, nbytes: int, what: str, end: int) -> ModelError:
        return ModelError(
            f"Model file {self.path} is truncated: bytes {offset}..{offset + nbytes}{_of(what)} lie "
            f"beyond its end at byte {end}. Download or convert the model again."
        )

    def _enter(self) -> None:
        with self._state:
            if self._closed:
                raise ValueError(f"read from a closed FileRangeReader of {self.path}")
            self._active += 1

    def _leave(self) -> None:
        with self._state:
            self._active -= 1
            if self._active == 0:
                self._state.notify_all()

    def close(self) -> None:
        """Close the file after reads in progress finish. Closing twice is a no-op."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            while self._active:
                self._state.wait()
            os.close(self._fd)

    def __enter__(self) -> FileRangeReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.size} bytes"
        return f"<FileRangeReader {str(self.path)!r} {state}>"


def _of(what: str) -> str:
    return f" ({what})" if what else ""


def drop_mapped_pages(mapping: mmap.mmap, offset: int, nbytes: int) -> int:
    """Give back the touched pages of ``mapping`` that lie wholly inside ``[offset, offset + nbytes)``
    (``madvise(MADV_DONTNEED)``); returns the bytes advised.

    Only for **read-only file mappings** (``access=mmap.ACCESS_READ``): their pages come back from the
    file when touched again. On a private or anonymous mapping the kernel discards the data instead.
    Returns 0 where ``madvise`` is missing.
    """
    if not hasattr(mmap, "MADV_DONTNEED") or not hasattr(mapping, "madvise"):
        return 0
    start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
    stop = offset + nbytes
    if stop >= len(mapping):  # the mapping's last page may be partial: include it
        end = -(-len(mapping) // mmap.PAGESIZE) * mmap.PAGESIZE
    else:
        end = stop // mmap.PAGESIZE * mmap.PAGESIZE
    if end <= start:
        return 0
    mapping.madvise(mmap.MADV_DONTNEED, start, end - start)
    return end - start
