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

How a reader reads is its *read mode* (``read_mode=``; the process default from the environment
variable ``EDGERT_READ_MODE``, else :data:`DEFAULT_READ_MODE`):

- ``cached``: plain positional reads; the file's pages stay in the page cache.
- ``drop``: the same, then ``posix_fadvise(DONTNEED)`` on each chunk read (rounded out to whole
  pages), so streamed weights do not pile up in the page cache, which a device's memory limit (a
  cgroup) counts with the RSS.
- ``direct``: ``O_DIRECT`` reads that bypass the page cache, through a page-aligned bounce buffer of
  :data:`DIRECT_BOUNCE_BYTES` per reading thread (the only memory they touch besides the caller's
  buffer). Where the file system refuses ``O_DIRECT`` the reader says so once (a
  ``RuntimeWarning``) and reads in ``drop`` mode.

When a mapping cannot be avoided (for example, a parser that maps the file to read its header),
:func:`drop_mapped_pages` gives the touched pages of a read-only file mapping back.
"""

from __future__ import annotations

import mmap
import os
import threading
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgert_core.errors import ConfigError, ModelError

DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024
"""Bytes per read call; with ``drop_cache`` the page cache is dropped after each chunk."""

READ_MODES = ("cached", "drop", "direct")
DEFAULT_READ_MODE = "cached"
"""The read mode of readers made without ``read_mode`` when ``EDGERT_READ_MODE`` is not set."""
DIRECT_BOUNCE_BYTES = 1024 * 1024
"""Bytes of the aligned bounce buffer of ``direct`` reads, per reading thread."""
DIRECT_ALIGN = 4096
"""Offset, length and buffer alignment of ``O_DIRECT`` reads (the page size covers every block
size Linux file systems use)."""
_O_DIRECT: int | None = getattr(os, "O_DIRECT", None)
_PAGE = mmap.PAGESIZE


def default_read_mode() -> str:
    """``EDGERT_READ_MODE`` when it names a read mode, else :data:`DEFAULT_READ_MODE`; any other
    value is a :class:`~edgert_core.errors.ConfigError` naming the valid ones."""
    value = os.environ.get("EDGERT_READ_MODE", "").strip().lower()
    if not value:
        return DEFAULT_READ_MODE
    return check_read_mode(value, "EDGERT_READ_MODE")


def check_read_mode(mode: str, what: str = "read_mode") -> str:
    if mode not in READ_MODES:
        raise ConfigError(f"{what} {mode!r} is not a read mode; use one of {', '.join(READ_MODES)}.")
    return mode

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
        read_mode: str | None = None,
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes
        mode = check_read_mode(read_mode) if read_mode is not None else default_read_mode()
        if drop_cache and mode == "cached":
            mode = "drop"
        self._direct_fd: int | None = None
        self._bounce = threading.local()
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as err:
            raise ModelError(
                f"Cannot open model file {self.path}: {err.strerror}. Check the path and its "
                "permissions."
            ) from err
        self.size = os.fstat(self._fd).st_size
        self.read_mode = "cached"
        self.drop_cache = False
        self.set_read_mode(mode)
        self._state = threading.Condition(threading.Lock())
        self._active = 0
        self._closed = False
        self._seek_lock = threading.Lock()  # only where os.preadv is missing

    @property
    def closed(self) -> bool:
        return self._closed

    def set_read_mode(self, mode: str) -> str:
        """Read in ``mode`` from now on (reads in progress finish as they began); returns the mode
        in force, ``drop`` where ``direct`` was asked for and the file system refused it."""
        mode = check_read_mode(mode)
        if mode == "direct" and self._direct_fd is None:
            mode = self._open_direct()
        self.read_mode = mode
        self.drop_cache = mode == "drop" and _HAVE_FADVISE
        return mode

    def _open_direct(self) -> str:
        """Open the file a second time for ``O_DIRECT`` reads (:func:`open_direct`); the read mode
        that results (``drop`` where it fails, said once)."""
        fd, reason = open_direct(self.path)
        if fd is not None:
            self._direct_fd = fd
            return "direct"
        _say_once(f"edge-rt: {self.path}: {reason}; reading it with posix_fadvise(DONTNEED) after "
                  "each read instead (read mode 'drop').")
        return "drop"

    def _bounce_buffer(self) -> mmap.mmap:
        buf: mmap.mmap | None = getattr(self._bounce, "buf", None)
        if buf is None:
            buf = self._bounce.buf = mmap.mmap(-1, DIRECT_BOUNCE_BYTES)  # page-aligned
        return buf

    def _direct_into(self, view: memoryview, offset: int) -> int:
        """One ``O_DIRECT`` read of up to a bounce buffer's worth at ``offset`` into ``view``
        (aligned range through the bounce buffer); returns the bytes given, 0 at the file's end."""
        assert self._direct_fd is not None
        start = offset // DIRECT_ALIGN * DIRECT_ALIGN
        lead = offset - start
        want = min(len(view), DIRECT_BOUNCE_BYTES - lead)
        span = -(-(lead + want) // DIRECT_ALIGN) * DIRECT_ALIGN
        bounce = self._bounce_buffer()
        got = os.preadv(self._direct_fd, [memoryview(bounce)[:span]], start)
        n = max(0, min(want, got - lead))
        view[:n] = memoryview(bounce)[lead : lead + n]
        return n

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
                        raise self._cannot_read(offset, offset + nbytes, what, err) from err
                    if got == 0:  # the file shrank after it was opened
                        raise self._truncated(offset, nbytes, what, offset + pos)
                    if self.drop_cache:
                        self._drop_pages(offset + pos, got)
                    pos += got
        finally:
            self._leave()
        return target

    def read_spans(self, parts: list[tuple[int, NDArray[Any]]], *, what: str = "",
                   max_gap: int = 4096) -> None:
        """Fill each ``(offset, out)`` of ``parts`` with ``len(out)`` file bytes from ``offset``, as
        few reads as possible: parts that follow each other in the file (sorted by offset, at most
        ``max_gap`` bytes apart: a GGUF file pads tensors to 32 bytes) are one vectored read
        (``preadv`` into the parts' own buffers, the gaps into a small scratch). A stage of a
        model's tensors, read one tensor at a time, costs one disk request per tensor (SmolLM2's
        norms are 2304 bytes: 0.2 ms each from disk); read together, one for the stage. Each
        ``out`` is a C-contiguous, writable ``uint8`` array. ``direct`` mode and platforms without
        ``preadv`` read part by part."""
        parts = sorted(parts, key=lambda p: p[0])
        runs: list[list[tuple[int, NDArray[Any]]]] = []
        for part in parts:
            if runs and 0 <= part[0] - (runs[-1][-1][0] + len(runs[-1][-1][1])) <= max_gap:
                runs[-1].append(part)
            else:
                runs.append([part])
        for run in runs:
            if len(run) == 1 or not _HAVE_PREADV:
                for offset, out in run:
                    self.read_into(offset, len(out), out, what=what)
            elif self._direct_fd is not None and self.read_mode == "direct":
                self._read_run_direct(run, what)
            else:
                self._read_run(run, what)

    def _read_run_direct(self, run: list[tuple[int, NDArray[Any]]], what: str) -> None:
        """Parts that follow each other in the file, read with ``O_DIRECT`` a bounce buffer at a
        time (aligned reads covering the whole run), each part's bytes copied out of it."""
        assert self._direct_fd is not None
        start, end = self._run_bounds(run, what)
        targets = [(offset, out.reshape(-1).view(np.uint8).data) for offset, out in run]
        self._enter()
        try:
            bounce = memoryview(self._bounce_buffer())
            pos = start // DIRECT_ALIGN * DIRECT_ALIGN
            while pos < end:
                span = min(DIRECT_BOUNCE_BYTES, -(-(end - pos) // DIRECT_ALIGN) * DIRECT_ALIGN)
                try:
                    got = os.preadv(self._direct_fd, [bounce[:span]], pos)
                except OSError as err:
                    raise self._cannot_read(start, end, what, err) from err
                if got <= 0:
                    raise self._truncated(start, end - start, what, pos)
                for offset, view in targets:  # the overlap of each part with [pos, pos + got)
                    lo, hi = max(offset, pos), min(offset + len(view), pos + got)
                    if lo < hi:
                        view[lo - offset : hi - offset] = bounce[lo - pos : hi - pos]
                pos += got
        finally:
            self._leave()

    def _read_run(self, run: list[tuple[int, NDArray[Any]]], what: str) -> None:
        """One vectored read of parts that follow each other in the file (see :meth:`read_spans`);
        a short read finishes part by part."""
        start, end = self._run_bounds(run, what)
        views: list[memoryview] = []
        pos = start
        for offset, out in run:
            if offset > pos:
                views.append(memoryview(bytearray(offset - pos)))
            views.append(out.reshape(-1).view(np.uint8).data)
            pos = offset + len(out)
        self._enter()
        try:
            try:
                got = os.preadv(self._fd, views, start)
            except OSError as err:
                raise self._cannot_read(start, end, what, err) from err
            if self.drop_cache:
                self._drop_pages(start, got)
        finally:
            self._leave()
        if got < end - start:  # rare (a signal, a huge span): the parts not wholly read, one by one
            for offset, out in run:
                if offset + len(out) > start + got:
                    self.read_into(offset, len(out), out, what=what)

    def _drop_pages(self, offset: int, nbytes: int) -> None:
        """Drop the cached pages of a range just read, rounded out to whole pages. The kernel drops
        only pages wholly inside the range it is given; a page a read covered in part (where a
        tensor starts or ends) would stay, and its read-ahead state with it: reading SmolLM2's
        tensors one by one with exact ranges left 59-86 of its 92 MiB in the page cache (pieces of
        2.1 MB and 0.33 MB), rounded out 2.2-2.4 MiB, at the same read speed."""
        start = offset // _PAGE * _PAGE
        end = -(-(offset + nbytes) // _PAGE) * _PAGE
        os.posix_fadvise(self._fd, start, end - start, os.POSIX_FADV_DONTNEED)

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
        if self._direct_fd is not None and self.read_mode == "direct":
            return self._direct_into(view, offset)
        if _HAVE_PREADV:
            return os.preadv(self._fd, [view], offset)
        with self._seek_lock:  # pragma: no cover - platforms without preadv (Windows)
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.readv(self._fd, [view])

    def _run_bounds(self, run: list[tuple[int, NDArray[Any]]], what: str) -> tuple[int, int]:
        """``[start, end)`` of a run of parts that follow each other in the file, after checking
        that the file holds it and that every part's ``out`` can be written in place."""
        start, end = run[0][0], run[-1][0] + len(run[-1][1])
        if end > self.size:
            raise self._truncated(start, end - start, what, self.size)
        for _, out in run:
            if not out.flags.c_contiguous or not out.flags.writeable:
                raise ValueError("every out must be a C-contiguous, writable array")
        return start, end

    def _cannot_read(self, start: int, end: int, what: str, err: OSError) -> ModelError:
        return ModelError(
            f"Cannot read bytes {start}..{end}{_of(what)} of model file {self.path}: {err.strerror}."
        )

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
            if self._direct_fd is not None:
                os.close(self._direct_fd)

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


def open_direct(path: str | os.PathLike[str]) -> tuple[int | None, str]:
    """``path`` opened for ``O_DIRECT`` reads, after one aligned read of its start succeeded, or
    ``None`` and why not (this platform has no ``O_DIRECT``, or the file system refused the open or
    the read)."""
    if _O_DIRECT is None:
        return None, "this platform has no O_DIRECT"
    try:
        fd = os.open(path, os.O_RDONLY | _O_DIRECT)
    except OSError as err:
        return None, f"opening it with O_DIRECT failed ({err.strerror})"
    probe = mmap.mmap(-1, DIRECT_ALIGN)  # page-aligned, as O_DIRECT wants
    try:
        os.preadv(fd, [probe], 0)
    except OSError as err:
        os.close(fd)
        return None, f"an O_DIRECT read failed ({err.strerror})"
    finally:
        probe.close()
    return fd, ""


_SAID: set[str] = set()


def _say_once(message: str) -> None:
    """A notice on stderr (a ``RuntimeWarning``), once per message in a process."""
    if message not in _SAID:
        _SAID.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


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
