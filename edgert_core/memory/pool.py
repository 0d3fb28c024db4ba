"""A memory pool that enforces the run's budget and reuses weight buffers between stages.

What counts against the budget
------------------------------
The budget is about what the operating system sees, so the pool counts **held** bytes::

    held = in use (buffers handed out) + cached (released blocks kept for reuse) + stuck

*stuck* bytes are blocks the pool tried to unmap while an array over them was still referenced
somewhere (see "Views" below); the OS still has them, so they still count.

Every block is its own anonymous ``mmap`` of whole pages. Unmapping a block gives its pages back to
the OS at once (no allocator arena or ``mmap`` threshold in between), so ``held`` follows the RSS the
pool causes. A fresh block counts in full from the moment it is mapped, even before its pages are
touched. Requests are rounded up to whole pages (:func:`block_bytes`): that rounding is the size-class
scheme. Blocks of the same class are reused exactly (a transformer's layers repeat the same tensor
sizes); the pool never hands out a larger cached block for a smaller request, so ``in use`` is the sum
of page-rounded requests. A caller that wants buffers of different sizes to share blocks asks for one
class explicitly (``allocate_many(..., size_class=...)``) and is counted for the whole class.
:meth:`MemoryPool.allocate_many` packs several arrays into one block at
64-byte aligned offsets, which keeps rounding to less than a page per group.

When a request does not fit
---------------------------
The pool first unmaps cached blocks, least recently released first, if that makes room. If it still
does not fit, :class:`MemoryPoolError` is raised at once; nothing waits for memory. The engine
allocates all of a run's memory (stage slots included) when it gets ready, and a plan that fits its
budget never needs more, so a failure means the plan or the budget is wrong; the message says what is
held and what to do.

Views
-----
A :class:`PoolBuffer` gives its memory back when released (``with`` block, exceptions included, or
:meth:`PoolBuffer.release`; releasing twice is a no-op). Arrays taken from it must not be used after
release. The pool protects against the worst outcome: it never hands a cached block out again while any
array over it is still alive (it checks the reference count), and a block with live arrays cannot be
unmapped (it becomes *stuck* and is retried on the next trim).

Threads
-------
All counters and lists are guarded by one lock; buffers may be allocated and released from any
thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import mmap
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import DTypeLike, NDArray

from edgert_core.budget import format_bytes
from edgert_core.errors import MemoryPoolError

log = logging.getLogger(__name__)

ALIGNMENT = 64
"""Every array the pool hands out starts at a multiple of this many bytes."""

PAGE_BYTES = mmap.PAGESIZE

HUGEPAGE_MIN_BYTES = 4 * 1024 * 1024
"""Blocks at least this large ask for transparent huge pages (where the kernel offers them)."""
_MADV_HUGEPAGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)

Shape: TypeAlias = int | tuple[int, ...]
BufferSpec: TypeAlias = tuple[Shape, DTypeLike]
"""``(shape, dtype)`` of one array in :meth:`MemoryPool.allocate_many`."""

POISON_BYTE = 0xFF
"""With ``poison=True`` released blocks are filled with this byte (fp32/fp16 NaN) to expose
use-after-release."""


class PoolLeakError(MemoryPoolError):
    """The pool was closed while buffers were still in use; the message lists their labels."""


def block_bytes(nbytes: int) -> int:
    """Bytes the pool holds for a request of ``nbytes``: whole pages, at least one page."""
    if nbytes < 0:
        raise ValueError(f"nbytes must not be negative, got {nbytes}")
    return max(PAGE_BYTES, -(-nbytes // PAGE_BYTES) * PAGE_BYTES)


def align_up(nbytes: int) -> int:
    """``nbytes`` rounded up to a multiple of :data:`ALIGNMENT` (where packed arrays start, in a pool
    block and in a prepared-weights file alike)."""
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def pack_offsets(specs: Sequence[BufferSpec]) -> tuple[list[int], int]:
    """Byte offsets of ``specs`` packed one after another at :data:`ALIGNMENT`, and the total bytes.

    The pool holds ``block_bytes(total)`` for :meth:`MemoryPool.allocate_many` of the same specs.
    """
    offsets, total, _ = _pack(specs)
    return offsets, total


_Spec: TypeAlias = tuple[tuple[int, ...], np.dtype[Any], int]  # shape, dtype, bytes


def _pack(specs: Sequence[BufferSpec]) -> tuple[list[int], int, list[_Spec]]:
    if isinstance(specs, tuple):  # the engine's fixed stage specs: worked out once
        with contextlib.suppress(TypeError):  # unhashable specs are packed every time
            offsets, end, parsed = _pack_fixed(specs)
            return list(offsets), end, list(parsed)
    return _pack_list(specs)


@functools.lru_cache(maxsize=1024)
def _pack_fixed(specs: tuple[BufferSpec, ...]) -> tuple[tuple[int, ...], int, tuple[_Spec, ...]]:
    offsets, end, parsed = _pack_list(specs)
    return tuple(offsets), end, tuple(parsed)


def _pack_list(specs: Sequence[BufferSpec]) -> tuple[list[int], int, list[_Spec]]:
    offsets: list[int] = []
    parsed: list[_Spec] = []
    end = 0
    for shape, dtype in specs:
        spec = _parse(shape, dtype)
        start = align_up(end)
        offsets.append(start)
        parsed.append(spec)
        end = start + spec[2]
    return offsets, end, parsed


def _parse(shape: Shape, dtype: DTypeLike) -> _Spec:
    dims = (int(shape),) if isinstance(shape, int | np.integer) else tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must not have negative dimensions, got {dims}")
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise ValueError(f"the pool cannot hold arrays of Python objects (dtype {dt})")
    return dims, dt, math.prod(dims) * dt.itemsize


class _Block:
    """One anonymous mapping of ``nbytes`` (whole pages) and the uint8 array over all of it."""

    __slots__ = ("data", "hugepages", "mapping", "nbytes", "serial")

    def __init__(self, nbytes: int, serial: int, hugepages: bool = True) -> None:
        self.nbytes = nbytes
        self.serial = serial
        self.hugepages = hugepages
        self.mapping: mmap.mmap = mmap.mmap(-1, nbytes)
        if hugepages and nbytes >= HUGEPAGE_MIN_BYTES and _MADV_HUGEPAGE is not None:
            # fewer TLB misses in matmuls over large weights, as numpy does for its own arrays
            with contextlib.suppress(OSError):
                self.mapping.madvise(_MADV_HUGEPAGE)
        self.data: NDArray[np.uint8] | None = np.frombuffer(self.mapping, dtype=np.uint8)

    def live_views(self) -> int:
        """Arrays other than the block's own that still point into it (numpy collapses every view's
        ``base`` onto ``self.data``, so each live view holds one reference)."""
        if self.data is None:
            return 0
        return sys.getrefcount(self.data) - 2  # our attribute and getrefcount's argument

    def unmap(self) -> bool:
        """Return the pages to the OS; False while some array still points into the block."""
        self.data = None
        try:
            self.mapping.close()
        except BufferError:
            return False
        return True


class PoolBuffer:
    """Pool memory handed out by :meth:`MemoryPool.allocate`; gives it back when released.

    Use it as a context manager or call :meth:`release` (a second release is a no-op). After release
    the arrays are gone from the guard and must not be used through other references either.
    """

    __slots__ = (
        "_arrays",
        "_block",
        "_pool",
        "block_bytes",
        "created",
        "label",
        "nbytes",
        "serial",
        "thread",
    )

    def __init__(
        self,
        pool: MemoryPool,
        block: _Block,
        arrays: tuple[NDArray[Any], ...],
        nbytes: int,
        label: str,
        serial: int,
    ) -> None:
        self._pool: MemoryPool | None = pool
        self._block: _Block | None = block
        self._arrays: tuple[NDArray[Any], ...] = arrays
        self.nbytes = nbytes
        self.block_bytes = block.nbytes
        self.label = label
        self.serial = serial
        self.thread = threading.current_thread().name
        self.created = time.monotonic()

    @property
    def released(self) -> bool:
        return self._block is None

    @property
    def arrays(self) -> tuple[NDArray[Any], ...]:
        """The arrays, one per spec, with the requested shapes and dtypes, 64-byte aligned."""
        if self._block is None:
            raise MemoryPoolError(f"Pool buffer {self.label!r} was used after it was released.")
        return self._arrays

    @property
    def array(self) -> NDArray[Any]:
        """The only array of a buffer made by :meth:`MemoryPool.allocate`."""
        arrays = self.arrays
        if len(arrays) != 1:
            raise ValueError(f"pool buffer {self.label!r} holds {len(arrays)} arrays; use .arrays")
        return arrays[0]

    @property
    def raw(self) -> NDArray[np.uint8]:
        """``uint8 [nbytes]``: the bytes of all arrays (and alignment gaps), from the block's start."""
        block = self._block
        if block is None or block.data is None:
            raise MemoryPoolError(f"Pool buffer {self.label!r} was used after it was released.")
        return block.data[: self.nbytes]

    def release(self) -> None:
        """Give the memory back to the pool. Safe to call more than once."""
        pool, block = self._pool, self._block
        if pool is None or block is None:
            return
        self._arrays = ()
        self._block = None
        self._pool = None
        pool._release(self, block)

    def __enter__(self) -> PoolBuffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "in use"
        return f"<PoolBuffer {self.label!r} {format_bytes(self.block_bytes)} {state}>"


@dataclass(frozen=True)
class PoolStats:
    """Counters of a :class:`MemoryPool` at one moment (bytes unless named otherwise)."""

    budget_bytes: int | None
    held_bytes: int
    in_use_bytes: int
    free_list_bytes: int
    stuck_bytes: int
    peak_bytes: int
    peak_in_use_bytes: int
    buffers_in_use: int
    allocations: int
    reuses: int
    fresh_blocks: int
    releases: int
    unmapped_blocks: int
    failures: int


@dataclass(frozen=True)
class AllocationInfo:
    """One buffer in use, for :meth:`MemoryPool.snapshot`."""

    label: str
    nbytes: int
    block_bytes: int
    thread: str
    age_s: float


@dataclass(frozen=True)
class PoolSnapshot:
    """Counters, buffers in use (largest first) and cached blocks per size class."""

    stats: PoolStats
    in_use: tuple[AllocationInfo, ...]
    free_blocks: dict[int, int]
    """size class in bytes -> number of cached blocks"""

    def to_dict(self) -> dict[str, Any]:
        return {
            "stats": asdict(self.stats),
            "in_use": [asdict(a) for a in self.in_use],
            "free_blocks": {str(k): v for k, v in sorted(self.free_blocks.items())},
        }

    def format(self) -> str:
        """A human-readable report, e.g. for ``--debug`` output or a leak message."""
        s = self.stats
        budget = "none" if s.budget_bytes is None else format_bytes(s.budget_bytes)
        lines = [
            f"pool: budget {budget}, held {format_bytes(s.held_bytes)} "
            f"(in use {format_bytes(s.in_use_bytes)}, cached {format_bytes(s.free_list_bytes)}, "
            f"stuck {format_bytes(s.stuck_bytes)}), peak {format_bytes(s.peak_bytes)}",
            f"      {s.allocations} allocations ({s.reuses} reused, {s.fresh_blocks} mapped), "
            f"{s.releases} releases, {s.unmapped_blocks} unmapped, "
            f"{s.failures} failures",
        ]
        lines += [
            f"  in use  {format_bytes(a.block_bytes):>10}  {a.label or '(no label)'}  "
            f"[{a.thread}, {a.age_s:.2f} s]"
            for a in self.in_use
        ]
        lines += [
            f"  cached  {format_bytes(size):>10}  x{count}"
            for size, count in sorted(self.free_blocks.items(), reverse=True)
        ]
        return "\n".join(lines)


class MemoryPool:
    """Budget-enforced buffers over anonymous memory, with size-class reuse (see the module doc).

    ``budget_bytes=None`` sets no limit (the pool still counts and reuses). ``poison=True`` fills
    released blocks with ``0xFF`` to expose use-after-release in tests. Close the pool (or use it as a
    context manager) at the end of a run: it unmaps everything and raises :class:`PoolLeakError` when
    buffers are still in use.
    """

    def __init__(self, budget_bytes: int | None, *, poison: bool = False) -> None:
        if budget_bytes is not None and budget_bytes <= 0:
            raise MemoryPoolError(f"A memory pool budget must be positive, got {budget_bytes} bytes.")
        self.budget_bytes = budget_bytes
        self.poison = poison
        self._lock = threading.Lock()
        self._free: dict[int, list[_Block]] = {}
        self._lru: OrderedDict[int, _Block] = OrderedDict()  # cached blocks, oldest release first
        self._stuck: list[_Block] = []
        self._live: dict[int, PoolBuffer] = {}
        self._serial = 0
        self._closed = False
        self._in_use = 0
        self._cached = 0
        self._stuck_bytes = 0
        self._peak = 0
        self._peak_in_use = 0
        self._allocations = 0
        self._reuses = 0
        self._fresh = 0
        self._releases = 0
        self._unmapped = 0
        self._failures = 0

    # -- allocation ---------------------------------------------------------------------------------

    def allocate(
        self,
        shape: Shape,
        dtype: DTypeLike = np.uint8,
        *,
        label: str = "",
    ) -> PoolBuffer:
        """One array of ``shape`` and ``dtype`` (uninitialised), as ``PoolBuffer.array``.

        Raises :class:`MemoryPoolError` when the request does not fit the budget.
        """
        return self.allocate_many([(shape, dtype)], label=label)

    def allocate_many(
        self,
        specs: Sequence[BufferSpec],
        *,
        label: str = "",
        size_class: int | None = None,
        hugepages: bool = True,
    ) -> PoolBuffer:
        """Several arrays in one block (e.g. all tensors of a layer group), as ``PoolBuffer.arrays``.

        Each array starts at a 64-byte aligned offset (:func:`pack_offsets`); all are released
        together. Budget behaviour as in :meth:`allocate`. ``size_class`` (bytes, at least the packed
        total) makes the block that large instead, and counts it in full: buffers of different sizes
        that share a class reuse each other's blocks instead of mapping (and faulting in) new ones.
        ``hugepages=False`` keeps the block off transparent huge pages (asked for blocks of at least
        :data:`HUGEPAGE_MIN_BYTES` otherwise): for a buffer filled a little at a time, such as the KV
        cache, whose RSS should grow with what is written rather than 2 MiB at a time.
        """
        if not specs:
            raise ValueError("allocate_many needs at least one (shape, dtype)")
        offsets, total, parsed = _pack(specs)
        size = block_bytes(total)
        if size_class is not None:
            if size_class < total:
                raise ValueError(
                    f"size_class {size_class} is smaller than the {total} bytes of {label!r}"
                )
            size = block_bytes(size_class)
        block, serial = self._acquire(size, label, hugepages)
        data = block.data
        assert data is not None
        arrays = tuple(
            data[off : off + nbytes].view(dt).reshape(dims)
            for off, (dims, dt, nbytes) in zip(offsets, parsed, strict=True)
        )
        del data
        buf = PoolBuffer(self, block, arrays, total, label, serial)
        with self._lock:
            self._live[serial] = buf
        return buf

    def _acquire(self, size: int, label: str, hugepages: bool = True) -> tuple[_Block, int]:
        with self._lock:
            self._check_open(size, label)
            budget = self.budget_bytes
            if budget is not None and size > budget:
                self._failures += 1
                raise MemoryPoolError(
                    f"Cannot allocate {format_bytes(size)} for {label or 'a buffer'!r}: the request "
                    f"is larger than the whole memory budget of {format_bytes(budget)}, so it can "
                    "never fit. Raise --memory-budget or choose a plan with smaller groups and "
                    "head slices."
                )
            block = self._take_cached(size, hugepages)
            if block is None and not self._fits(size) and self._trimming_helps(size):
                self._make_room(size)
            if block is None and self._fits(size):
                block = self._map(size, label, hugepages)
            if block is None:
                self._failures += 1
                raise self._no_room_error(size, label)
            self._in_use += size
            self._allocations += 1
            self._serial += 1
            self._peak_in_use = max(self._peak_in_use, self._in_use)
            self._peak = max(self._peak, self._held())
            return block, self._serial

    def _take_cached(self, size: int, hugepages: bool = True) -> _Block | None:
        blocks = self._free.get(size)
        if not blocks:
            return None
        for i in range(len(blocks) - 1, -1, -1):  # most recently released first: warm pages
            block = blocks[i]
            if block.live_views() == 0 and block.hugepages == hugepages:
                del blocks[i]
                del self._lru[block.serial]
                self._cached -= size
                self._reuses += 1
                return block
        return None

    def _map(self, size: int, label: str, hugepages: bool = True) -> _Block:
        self._serial += 1
        try:
            block = _Block(size, self._serial, hugepages)
        except OSError as err:
            self._failures += 1
            raise MemoryPoolError(
                f"The operating system refused {format_bytes(size)} for {label or 'a buffer'!r} "
                f"({err.strerror}) with {format_bytes(self._held())} held by the pool. Lower "
                "--memory-budget to what the device has free."
            ) from err
        self._fresh += 1
        return block

    def _held(self) -> int:
        return self._in_use + self._cached + self._stuck_bytes

    def _fits(self, size: int) -> bool:
        return self.budget_bytes is None or self._held() + size <= self.budget_bytes

    def _trimming_helps(self, size: int) -> bool:
        """Whether unmapping cached (and stuck) blocks could make room for ``size`` more bytes."""
        budget = self.budget_bytes
        return (
            budget is not None
            and bool(self._lru or self._stuck)
            and self._in_use + size <= budget
        )

    def _make_room(self, size: int) -> None:
        """Retry stuck blocks, then unmap cached blocks, oldest release first, until ``size`` fits."""
        self._retry_stuck()
        budget = self.budget_bytes
        if budget is None or self._in_use + self._stuck_bytes + size > budget:
            return  # still-stuck blocks leave too little room: keep the cache
        while self._lru and not self._fits(size):
            self._unmap_oldest_cached()

    def _check_open(self, size: int, label: str) -> None:
        if self._closed:
            raise MemoryPoolError(
                f"Cannot allocate {format_bytes(size)} for {label or 'a buffer'!r}: the memory pool "
                "is closed."
            )

    def _no_room_error(self, size: int, label: str) -> MemoryPoolError:
        budget = self.budget_bytes
        assert budget is not None
        largest = sorted(self._live.values(), key=lambda b: b.block_bytes, reverse=True)[:3]
        users = ", ".join(f"{b.label or '(no label)'} {format_bytes(b.block_bytes)}" for b in largest)
        stuck = ""
        if self._stuck_bytes:
            stuck = (
                f"; {format_bytes(self._stuck_bytes)} cannot be returned because arrays of "
                "released buffers are still referenced"
            )
        return MemoryPoolError(
            f"Cannot allocate {format_bytes(size)} for {label or 'a buffer'!r}: "
            f"{format_bytes(self._in_use)} of the {format_bytes(budget)} memory budget is "
            f"in use ({len(self._live)} buffers{': ' + users if users else ''}){stuck}. Raise "
            "--memory-budget or choose a plan with smaller groups (or without prefetch)."
        )

    # -- release and trimming ----------------------------------------------------------------------

    def _release(self, buf: PoolBuffer, block: _Block) -> None:
        if self.poison and block.data is not None:
            block.data.fill(POISON_BYTE)  # outside the lock: the block still belongs to the caller
        with self._lock:
            self._live.pop(buf.serial, None)
            self._in_use -= block.nbytes
            self._releases += 1
            if self._closed:
                self._unmap_locked(block)
            else:
                self._free.setdefault(block.nbytes, []).append(block)
                self._lru[block.serial] = block
                self._cached += block.nbytes

    def _unmap_locked(self, block: _Block) -> None:
        if block.unmap():
            self._unmapped += 1
        else:
            self._stuck.append(block)
            self._stuck_bytes += block.nbytes
            log.warning(
                "pool block of %s is still referenced after release; it stays mapped",
                format_bytes(block.nbytes),
            )

    def _retry_stuck(self) -> None:
        still_stuck: list[_Block] = []
        for block in self._stuck:
            if block.unmap():
                self._stuck_bytes -= block.nbytes
                self._unmapped += 1
            else:
                still_stuck.append(block)
        self._stuck = still_stuck

    def _unmap_oldest_cached(self) -> None:
        _, block = self._lru.popitem(last=False)
        self._free[block.nbytes].remove(block)
        self._cached -= block.nbytes
        self._unmap_locked(block)

    def _trim_locked(self, keep_bytes: int) -> int:
        before = self._held()
        self._retry_stuck()
        while self._lru and self._cached > keep_bytes:
            self._unmap_oldest_cached()
        return before - self._held()

    def trim(self, keep_bytes: int = 0) -> int:
        """Unmap cached blocks (oldest first) until at most ``keep_bytes`` stay cached; returns the
        bytes given back to the OS."""
        with self._lock:
            return self._trim_locked(keep_bytes)

    # -- inspection ---------------------------------------------------------------------------------

    @property
    def held_bytes(self) -> int:
        """Bytes the pool has mapped: in use + cached + stuck. Never more than the budget."""
        with self._lock:
            return self._held()

    @property
    def in_use_bytes(self) -> int:
        with self._lock:
            return self._in_use

    @property
    def free_list_bytes(self) -> int:
        with self._lock:
            return self._cached

    @property
    def peak_bytes(self) -> int:
        """Highest ``held_bytes`` since the pool was made."""
        with self._lock:
            return self._peak

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> PoolStats:
        with self._lock:
            return self._stats_locked()

    def _stats_locked(self) -> PoolStats:
        return PoolStats(
            budget_bytes=self.budget_bytes,
            held_bytes=self._held(),
            in_use_bytes=self._in_use,
            free_list_bytes=self._cached,
            stuck_bytes=self._stuck_bytes,
            peak_bytes=self._peak,
            peak_in_use_bytes=self._peak_in_use,
            buffers_in_use=len(self._live),
            allocations=self._allocations,
            reuses=self._reuses,
            fresh_blocks=self._fresh,
            releases=self._releases,
            unmapped_blocks=self._unmapped,
            failures=self._failures,
        )

    def snapshot(self) -> PoolSnapshot:
        """Counters, the buffers in use with their labels, and the cached blocks per size class."""
        with self._lock:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> PoolSnapshot:
        now = time.monotonic()
        live = sorted(self._live.values(), key=lambda b: (-b.block_bytes, b.serial))
        return PoolSnapshot(
            stats=self._stats_locked(),
            in_use=tuple(
                AllocationInfo(b.label, b.nbytes, b.block_bytes, b.thread, now - b.created)
                for b in live
            ),
            free_blocks={size: len(blocks) for size, blocks in self._free.items() if blocks},
        )

    # -- closing -------------------------------------------------------------------------------------

    def close(self, *, check_leaks: bool = True) -> None:
        """Unmap every cached block and refuse new allocations.

        Buffers still in use stay valid and are unmapped when released. With ``check_leaks`` raises
        :class:`PoolLeakError` listing them; otherwise logs them. Closing twice is a no-op.
        """
        with self._lock:
            first = not self._closed
            self._closed = True
            self._trim_locked(0)
            leaked = list(self._live.values())
            report = self._snapshot_locked().format() if leaked else ""
        if not leaked or not first:
            return
        labels = ", ".join(repr(b.label or "(no label)") for b in leaked[:10])
        message = (
            f"The memory pool was closed with {len(leaked)} buffers still in use ({labels}); this "
            "is an edge-rt bug: every buffer must be released. Pool state:\n" + report
        )
        if check_leaks:
            raise PoolLeakError(message)
        log.error("%s", message)

    def __enter__(self) -> MemoryPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # An exception on the way out already explains the run's end: report leaks, do not mask it.
        self.close(check_leaks=exc_type is None)

    def __repr__(self) -> str:
        s = self.stats()
        budget = "none" if s.budget_bytes is None else format_bytes(s.budget_bytes)
        return (
            f"<MemoryPool budget {budget}, held {format_bytes(s.held_bytes)}, "
            f"in use {format_bytes(s.in_use_bytes)}>"
        )
