"""Runs a validated model on a kernel backend under a memory budget, walking an execution plan.

The engine's states are three classes, each made by the step before it::

    planned = Engine(model, backend).plan(context, strategy)    # idle -> planned: a plan is made
    ready = planned.prepare()                                   # planned -> ready: buffers prepared
    for token in ready.generate(prompt_ids, max_tokens=32): ... # only a ReadyEngine generates
    ready.close()                                               # every pool byte given back

Calling a step out of order is a type error (``Engine`` has no ``generate``); at run time an object
that was consumed by its next step refuses further use with :class:`EngineStateError`.

What counts against the budget
------------------------------
Every byte the run holds comes from one :class:`~edgert_core.memory.MemoryPool` whose budget is the
run's budget: the KV cache (sized from ``max_context``), resident groups and head, the *stage slots*
that streamed stages load into (one, or with prefetch one more per stage loaded ahead, each as large
as the largest stage), the loader's scratch buffer (file bytes waiting to be dequantized), and the
activations. numpy's temporaries cannot come from the pool, so the activations are an *accounting
block*: the pool maps (and never touches) the bytes the plan predicts for activations, minus what page
rounding and slice rounding cost elsewhere, so the pool's held bytes never exceed the plan's predicted
peak and the untouched block adds nothing to the RSS the operating system measures. The real
temporaries are of the same order (one prefill chunk's activations) and stay below it: the tests check
the OS's peak RSS over the baseline against the budget. The loader's own buffers (its scratch, the file
bytes of a tensor prepared whole, the chunk that writes the prepared-weights cache) are sized from the
room the plan leaves and come out of the activations' share (see :meth:`ReadyEngine._allocate`); only
when that share is smaller than one tensor prepared whole (a toy model with a tiny context) does the
pool hold more than the predicted peak, by at most that difference.

Raise, never wait
-----------------
Every pool allocation raises :class:`~edgert_core.MemoryPoolError` when it does not fit: a plan that
fits never runs out, so running out is a bug or a wrong plan. All of a run's memory is allocated when
the engine gets ready; streaming then only moves stages in and out of the slots. The prefetch thread
starts a load only when a slot is free (the main thread gives a stage's slot back before it takes the
next stage), so it never waits for memory either.

Walking the plan
----------------
Per forward pass (a prefill chunk or one decode token): token embeddings are looked up by row (from
the resident head when it is the tied table, otherwise read row by row from the file), then each
group runs: a resident group from memory; a streamed group stage by stage, each stage loaded into a
slot, its block parts computed (:meth:`Transformer.run_parts`, which carries the hidden state and the
MLP's inner activation from stage to stage) and its slot given back. The plan's ``stage_bytes`` cuts a
streamed group into stages between block parts (0: the group is one stage). Then the head: resident,
or row slices of at most ``plan.head_slice_bytes``, one stage each. With ``plan.prefetch`` one
background thread, at a lower CPU priority than the compute, loads up to
:data:`~edgert_core.plan.PREFETCH_DEPTH` stages ahead in order, wrapping from the last head slice to
the next token's first stage. Its exceptions surface in the main thread when the stage is taken, and
:meth:`ReadyEngine.close` joins it.

Where weights come from
-----------------------
See :mod:`edgert_core.weight_cache`: the backend's prepared bytes from the prepared-weights cache,
or the model file, read straight into the pool buffer when the prepared form is the file's bytes and
otherwise read through the scratch buffer and prepared (dequantized) into the pool buffer row chunk by
row chunk. All reads are positional reads (no mapping of the model file).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from edgert_core.backends.base import KernelBackend, Weight, usable_cpus
from edgert_core.backends.numpy_ref import NumpyBackend, file_nbytes
from edgert_core.errors import EdgeRTError, MemoryPoolError
from edgert_core.layout import BLOCK_PARTS, ModelLayout, TensorInfo, block_part
from edgert_core.loaders.base import ValidatedModel, row_nbytes
from edgert_core.memory.malloc import release_freed_memory_promptly
from edgert_core.memory.pool import (
    PAGE_BYTES,
    POISON_BYTE,
    MemoryPool,
    PoolBuffer,
    align_up,
    block_bytes,
    pack_offsets,
)
from edgert_core.memory.rss import current_rss_bytes, reset_peak_rss
from edgert_core.models.config import (
    final_norm_names,
    layer_prefix,
    output_name,
    position_embedding_name,
    token_embedding_name,
)
from edgert_core.models.kv_cache import KVCache
from edgert_core.models.transformer import FUSIONS, BlockState, LayerWeights, Transformer
from edgert_core.plan import (
    ExecutionPlan,
    PlanningContext,
    fixed_bytes,
    group_stages,
    head_slices,
    slots_for,
)
from edgert_core.weight_cache import (
    PreparedWeights,
    cache_path,
    enabled_by_env,
    open_prepared,
    remove_stale,
    source_record,
    writing,
)

if TYPE_CHECKING:
    from edgert_core.generate import GenerationStats, SamplingParams
    from edgert_core.plugins import PluginRegistry

F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]

SCRATCH_BYTES = 256 * 1024
"""The loader's buffer for file bytes that are dequantized row chunk by row chunk."""

BUILD_CHUNK_BYTES = 4 * 1024 * 1024
"""Prepared bytes per step while the prepared-weights cache is written."""

WeightSource = Literal["prepared-cache", "model-file", "synthetic"]


class EngineStateError(EdgeRTError):
    """An engine step was called on an object that was already consumed (or closed)."""


class _Step:
    """One state of the engine; :meth:`_consume` hands it on to the next state exactly once."""

    _consumed_by: str | None = None

    def _check(self, method: str) -> None:
        if self._consumed_by is not None:
            raise EngineStateError(
                f"Cannot call {type(self).__name__}.{method}(): this engine was already "
                f"{self._consumed_by}; use the object that call returned."
            )

    def _consume(self, method: str, done: str) -> None:
        self._check(method)
        self._consumed_by = done


# -- prepared forms ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorForm:
    """How the backend holds one tensor in memory: the prepared array's dtype and shape, its bytes,
    whether they are exactly the file's bytes (``identical``: read straight into the pool buffer),
    and the prepared bytes of one row (2-D tensors, whose rows are contiguous in both forms)."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    nbytes: int
    identical: bool
    row_nbytes: int


def probe_form(backend: NumpyBackend, info: TensorInfo, transposed: bool) -> TensorForm:
    """The backend's prepared form of ``info``, found by preparing one row (or the whole of a 1-D
    tensor) of made-up bytes."""
    two_d = len(info.shape) == 2
    shape = (1, info.shape[1]) if two_d else info.shape
    pinfo = TensorInfo(info.name, shape, info.dtype, file_nbytes(info.dtype, shape))
    raw = (np.arange(pinfo.nbytes) % 61).astype(np.uint8)  # finite as any float type
    out = np.zeros(backend.weight_nbytes(pinfo), dtype=np.uint8)
    data = backend.prepare_weight(pinfo, raw, out).data
    if not (data.flags.c_contiguous and data.ctypes.data == out.ctypes.data):
        raise EdgeRTError(
            f"Backend {backend.name!r} does not prepare tensor {info.name} in the memory it is "
            "given, so it cannot run under the engine's memory pool."
        )
    identical = (
        not transposed and data.nbytes == pinfo.nbytes and out[: pinfo.nbytes].tobytes() == raw.tobytes()
    )
    if two_d:
        full = (info.shape[0], *data.shape[1:])
        nbytes = data.nbytes * info.shape[0]
        if backend.weight_nbytes(info) != nbytes:
            raise EdgeRTError(
                f"Backend {backend.name!r} holds tensor {info.name} in a form whose rows are not "
                "contiguous; the engine cannot stream it."
            )
        return TensorForm(data.dtype, full, nbytes, identical, data.nbytes)
    return TensorForm(data.dtype, tuple(data.shape), data.nbytes, identical, 0)


@dataclass(frozen=True)
class Piece:
    """A tensor, or rows ``rows[0]..rows[1]-1`` of a 2-D tensor, as one array of a stage."""

    name: str
    form: TensorForm
    rows: tuple[int, int] | None = None

    @property
    def nbytes(self) -> int:
        if self.rows is None:
            return self.form.nbytes
        return (self.rows[1] - self.rows[0]) * self.form.row_nbytes

    @property
    def shape(self) -> tuple[int, ...]:
        if self.rows is None:
            return self.form.shape
        return (self.rows[1] - self.rows[0], *self.form.shape[1:])


@dataclass(frozen=True)
class Stage:
    """What is loaded together into one pool buffer: block parts of a group's layers (``parts``:
    ``(layer, part)`` pairs, an index into :data:`~edgert_core.layout.BLOCK_PARTS`), or a slice of
    the head (the first slice also holds the final norm). ``group`` is the index of the plan group
    the stage belongs to (``None`` for the head)."""

    label: str
    layers: tuple[int, ...]
    pieces: tuple[Piece, ...]
    head: bool = False
    parts: tuple[tuple[int, int], ...] = ()
    group: int | None = None

    @functools.cached_property
    def specs(self) -> tuple[tuple[int, type[np.uint8]], ...]:
        """The pool specs of the stage's buffer: one byte array per piece (computed once)."""
        return tuple((p.nbytes, np.uint8) for p in self.pieces)

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        """Each piece's byte offset in the stage's buffer."""
        return tuple(pack_offsets(self.specs)[0])

    @functools.cached_property
    def nbytes(self) -> int:
        return pack_offsets(self.specs)[1]

    @property
    def block_bytes(self) -> int:
        return block_bytes(self.nbytes)


class LoadedStage:
    """A stage's weights in pool memory: ``weights`` by name, and ``parts`` (each block part's
    layer weights and part index) for :meth:`Transformer.run_parts`. :meth:`release` drops the
    views and gives the memory back (a resident stage's buffer, or a streamed stage's slot)."""

    def __init__(self, stage: Stage, weights: dict[str, Weight],
                 parts: list[tuple[LayerWeights, int]], release: Callable[[], None]) -> None:
        self.stage = stage
        self.weights = weights
        self.parts = parts
        self._release: Callable[[], None] | None = release

    @property
    def layers(self) -> list[LayerWeights]:
        """The stage's whole layers (a resident stage holds every part of its layers)."""
        seen: dict[int, LayerWeights] = {}
        for w, _ in self.parts:
            seen.setdefault(w.index, w)
        return list(seen.values())

    def release(self) -> None:
        self.weights = {}
        self.parts = []
        release, self._release = self._release, None
        if release is not None:
            release()


# -- reading weights into pool memory -----------------------------------------------------------


class WeightReader:
    """Fills pool arrays with prepared tensors, from the prepared-weights cache or the model file."""

    def __init__(self, model: ValidatedModel, backend: NumpyBackend, forms: dict[str, TensorForm],
                 prepared: PreparedWeights | None, source: WeightSource) -> None:
        self.model = model
        self.backend = backend
        self.forms = forms
        self.prepared = prepared
        self.source: WeightSource = source
        self.scratch: PoolBuffer | None = None
        self._scratch_lock = threading.Lock()
        # the file bytes of tensors prepared whole go here when set (see temporary_bytes), else
        # into pool buffers of their own
        self.whole: PoolBuffer | None = None
        self._whole_lock = threading.Lock()
        # per-stage facts worked out on the first load, not on every one
        self._infos: dict[Piece, TensorInfo] = {}
        self._contiguous_stages: dict[tuple[Piece, ...], bool] = {}

    def needs_scratch(self) -> bool:
        return self.prepared is None and any(not f.identical for f in self.forms.values())

    def scratch_bytes(self, budget: int | None, room: int | None = None) -> int:
        """The scratch buffer's size: :data:`SCRATCH_BYTES`, less under a small budget or when only
        ``room`` bytes of the pool are left for it, at least one file row of every tensor read
        through it."""
        rows = [row_nbytes(self.model.info(n)) for n, f in self.forms.items()
                if not f.identical and f.row_nbytes]
        size = SCRATCH_BYTES if budget is None else min(SCRATCH_BYTES, budget // 32)
        if room is not None:
            size = min(size, room // PAGE_BYTES * PAGE_BYTES)
        return max(size, *rows, 1)

    def temporary_bytes(self, pieces: Sequence[Piece]) -> int:
        """The most pool bytes one :meth:`fill` of any of ``pieces`` takes besides its destination:
        the file bytes (and, stored transposed, the stored layout) of a tensor that is prepared
        whole (:meth:`_prepare_whole`). Reads from the prepared-weights cache and row-by-row
        preparation (through the scratch buffer) take none."""
        if self.prepared is not None:
            return 0
        most = 0
        for piece in pieces:
            form = self.form_of(piece)
            entry = self.model.entry(piece.name)
            whole = (piece.rows is None and form.row_nbytes == 0) or entry.transposed
            if form.identical or not whole:
                continue
            n = entry.info.nbytes
            most = max(most, block_bytes(align_up(n) + n if entry.transposed else n))
        return most

    def weight(self, piece: Piece, data: U8) -> Weight:
        """The :class:`Weight` over ``data`` (``uint8``, at least ``piece.nbytes``) once filled."""
        info = self._infos.get(piece)
        if info is None:
            info = self.model.info(piece.name)
            if piece.rows is not None:
                a, b = piece.rows
                info = TensorInfo(f"{piece.name}[{a}:{b}]", (b - a, info.shape[1]), info.dtype,
                                  (b - a) * row_nbytes(info))
            self._infos[piece] = info
        arr = data[: piece.nbytes].view(piece.form.dtype).reshape(piece.shape)
        return Weight(info, arr)

    def fill_stage(self, stage: Stage, raw: U8) -> None:
        """Fill ``raw`` (``uint8``, at least ``stage.nbytes``) with the stage's pieces packed at
        ``stage.offsets``: one read when they lie that way in the prepared-weights file."""
        pieces = stage.pieces
        contiguous = self._contiguous_stages.get(pieces)
        if contiguous is None:
            contiguous = self._contiguous_stages[pieces] = self._contiguous(pieces)
        if contiguous:
            assert self.prepared is not None
            first = self._cache_offset(pieces[0])
            self.prepared.read_into(first, stage.nbytes, raw[: stage.nbytes], what=pieces[0].name)
        else:
            for piece, off in zip(pieces, stage.offsets, strict=True):
                self.fill(piece, raw[off : off + piece.nbytes])

    def stage_weights(self, stage: Stage, raw: U8) -> dict[str, Weight]:
        """The weights of ``stage`` over ``raw`` (filled by :meth:`fill_stage`), by name."""
        return {p.name: self.weight(p, raw[off : off + p.nbytes])
                for p, off in zip(stage.pieces, stage.offsets, strict=True)}

    def _cache_offset(self, piece: Piece) -> int:
        assert self.prepared is not None
        entry = self.prepared.entries[piece.name]
        return entry.offset + (0 if piece.rows is None else piece.rows[0] * piece.form.row_nbytes)

    def _contiguous(self, pieces: Sequence[Piece]) -> bool:
        """Whether ``pieces`` lie in the prepared-weights file exactly as a pool buffer packs them
        (then one read fills the whole buffer)."""
        if self.prepared is None:
            return False
        offsets, _ = pack_offsets([(p.nbytes, np.uint8) for p in pieces])
        first = self._cache_offset(pieces[0])
        return all(self._cache_offset(p) - first == off for p, off in zip(pieces, offsets, strict=True))

    def fill(self, piece: Piece, out: U8) -> None:
        """Write the prepared bytes of ``piece`` into ``out`` (``uint8 [piece.nbytes]``)."""
        form = self.form_of(piece)
        if self.prepared is not None:
            self.prepared.read_into(self._cache_offset(piece), piece.nbytes, out, what=piece.name)
            return
        rows = piece.rows if piece.rows is not None else (
            (0, form.shape[0]) if form.row_nbytes else None
        )
        entry = self.model.entry(piece.name)
        if form.identical:
            if rows is None:
                self.model.read_tensor(piece.name, out=out)
            else:
                self.model.read_rows(piece.name, rows[0], rows[1], out=out)
            return
        info = entry.info
        if rows is None or entry.transposed:
            self._prepare_whole(info, piece, out)
            return
        rb = row_nbytes(info)
        assert self.scratch is not None
        step = max(1, self.scratch.nbytes // rb)
        with self._scratch_lock:
            scratch = self._scratch_array(min(step, rows[1] - rows[0]) * rb)
            for a in range(rows[0], rows[1], step):
                b = min(rows[1], a + step)
                raw = self.model.read_rows(piece.name, a, b, out=scratch)
                part = TensorInfo(f"{info.name}[{a}:{b}]", (b - a, info.shape[1]), info.dtype, len(raw))
                lo = (a - rows[0]) * form.row_nbytes
                self.backend.prepare_weight(part, raw, out[lo : lo + (b - a) * form.row_nbytes])
            del scratch, raw

    def form_of(self, piece: Piece) -> TensorForm:
        return self.forms[piece.name]

    def _scratch_array(self, nbytes: int) -> U8:
        if self.scratch is None or self.scratch.nbytes < nbytes:
            raise MemoryPoolError(f"The loader's scratch buffer is missing or smaller than {nbytes} bytes.")
        arr: U8 = self.scratch.array[:nbytes]
        return arr

    def _prepare_whole(self, info: TensorInfo, piece: Piece, out: U8) -> None:
        """A tensor that cannot be prepared row by row (1-D, or stored transposed): its file bytes
        (and, for a transposed one, the stored layout) go through the reader's ``whole`` buffer
        when it is large enough, else through temporary pool buffers."""
        transposed = self.model.entry(info.name).transposed
        n = info.nbytes
        whole = self.whole
        if whole is not None and whole.nbytes >= (align_up(n) + n if transposed else n):
            with self._whole_lock:
                buf: U8 = whole.array
                raw = self.model.read_tensor(
                    info.name, out=buf[:n], scratch=buf[align_up(n) : align_up(n) + n] if transposed else None
                )
                self.backend.prepare_weight(info, raw, out[: piece.nbytes])
                del raw, buf
            return
        pool = self.pool
        with pool.allocate(n, label=f"file bytes of {info.name}") as raw_buf:
            stored = None
            if transposed:
                stored = pool.allocate(n, label=f"stored bytes of {info.name}")
            try:
                raw = self.model.read_tensor(
                    info.name, out=raw_buf.array, scratch=None if stored is None else stored.array
                )
                self.backend.prepare_weight(info, raw, out[: piece.nbytes])
                del raw
            finally:
                if stored is not None:
                    stored.release()

    pool: MemoryPool  # set by the engine

    def rows(self, name: str, ids: NDArray[np.int64]) -> Weight:
        """Rows ``ids`` (``int64 [T]``) of a 2-D tensor as a weight ``[T, cols]`` in new (numpy)
        memory: embedding lookups, which count as activations."""
        info = self.model.info(name)
        form = self.forms[name]
        part = TensorInfo(f"{name}[ids]", (len(ids), info.shape[1]), info.dtype,
                          len(ids) * row_nbytes(info))
        if self.prepared is not None:
            entry = self.prepared.entries[name]
            out = np.empty((len(ids), form.row_nbytes), dtype=np.uint8)
            for j, i in enumerate(ids.tolist()):
                self.prepared.read_into(entry.offset + i * form.row_nbytes, form.row_nbytes, out[j],
                                        what=name)
            return Weight(part, out.view(form.dtype).reshape(len(ids), *form.shape[1:]))
        raw = self.model.read_row_set(name, ids)  # [T, row_bytes]
        return self.backend.prepare_weight(
            part, raw.reshape(-1), np.empty(self.backend.weight_nbytes(part), dtype=np.uint8)
        )


# -- timing --------------------------------------------------------------------------------------


@dataclass
class EngineTimes:
    """Where a run's time goes, in seconds: ``load`` is the wall time of streamed loads (in whichever
    thread ran them), ``wait`` the main thread's time blocked on a load (all of ``load`` without
    prefetch), ``compute`` the main thread's time computing."""

    load: float = 0.0
    wait: float = 0.0
    compute: float = 0.0
    loads: int = 0

    def minus(self, other: EngineTimes) -> EngineTimes:
        return EngineTimes(self.load - other.load, self.wait - other.wait,
                           self.compute - other.compute, self.loads - other.loads)

    def hidden_fraction(self) -> float:
        """The part of the load time that ran behind compute (0..1)."""
        if self.load <= 0:
            return 0.0
        return min(1.0, max(0.0, 1.0 - self.wait / self.load))


class StagePipeline:
    """Hands out the streamed stages in order, each in one of the ``slots`` (pool buffers as large as
    the largest stage, held for the whole run). Without prefetch a stage loads when it is taken; with
    prefetch the next ``len(slots) - 1`` stages load in order on one background thread while the
    current one computes, wrapping round from the last stage to the first.

    ``fill(stage_index, slot)`` reads a stage into a slot's memory; ``views(stage_index, slot)``
    returns its weights and block parts over that memory, made once per (stage, slot) and reused,
    since a slot's memory stays where it is for the whole run."""

    def __init__(
        self,
        stages: Sequence[Stage],
        slots: Sequence[PoolBuffer],
        fill: Callable[[int, int], None],
        views: Callable[[int, int], tuple[dict[str, Weight], list[tuple[LayerWeights, int]]]],
        prefetch: bool,
        times: EngineTimes,
        lock: threading.Lock,
        poison: Callable[[int], None] | None = None,
    ) -> None:
        self.stages = list(stages)
        self._fill = fill
        self._views = views
        self._poison = poison
        self._times = times
        self._lock = lock
        self._free = list(range(len(slots)))
        self._ahead = max(0, len(slots) - 1) if prefetch else 0
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgert-prefetch",
                               initializer=_lower_thread_priority)
            if self._ahead > 0 else None
        )
        self._pending: dict[int, tuple[int, Future[None]]] = {}  # stage index -> (slot, load)
        self._cache: dict[tuple[int, int], tuple[dict[str, Weight],
                                                 list[tuple[LayerWeights, int]]]] = {}

    @property
    def prefetch(self) -> bool:
        return self._executor is not None

    def _timed_fill(self, index: int, slot: int) -> None:
        t0 = time.perf_counter()
        self._fill(index, slot)
        with self._lock:
            self._times.load += time.perf_counter() - t0
            self._times.loads += 1

    def _start(self, index: int) -> None:
        slot = self._free.pop()
        assert self._executor is not None
        self._pending[index] = (slot, self._executor.submit(self._timed_fill, index, slot))

    def take(self, index: int) -> LoadedStage:
        """Stage ``index`` loaded (the caller releases it before taking the next); starts loading
        the ones after it."""
        t0 = time.perf_counter()
        if index not in self._pending:
            self.drain()
            if self._executor is None:
                slot = self._free.pop()
                try:
                    self._timed_fill(index, slot)
                except BaseException:
                    self._free.append(slot)
                    raise
            else:
                self._start(index)
        if index in self._pending:
            slot, future = self._pending.pop(index)
            try:
                future.result()  # a load's exception surfaces here
            except BaseException:
                self._free.append(slot)
                raise
        with self._lock:
            self._times.wait += time.perf_counter() - t0
        n = len(self.stages)
        for k in range(1, self._ahead + 1):
            nxt = (index + k) % n
            if nxt == index:
                break
            if nxt not in self._pending and self._free:
                self._start(nxt)
        key = (index, slot)
        views = self._cache.get(key)
        if views is None:
            views = self._cache[key] = self._views(index, slot)
        weights, parts = views
        return LoadedStage(self.stages[index], weights, parts,
                           functools.partial(self._give_back, slot))

    def _give_back(self, slot: int) -> None:
        if self._poison is not None:
            self._poison(slot)
        self._free.append(slot)

    def drain(self) -> None:
        """Give back the stages loaded ahead (waiting for their loads to finish)."""
        pending, self._pending = self._pending, {}
        for slot, future in pending.values():
            # a failed speculative load was for a step that will not run, and holds nothing
            with contextlib.suppress(EdgeRTError):
                future.result()
            self._free.append(slot)

    def close(self) -> None:
        """Drain and join the prefetch thread; drop the cached views."""
        self.drain()
        self._cache = {}
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


PREFETCH_NICE = 10
"""The prefetch thread's nice value (Linux): below the compute thread's priority."""


def _lower_thread_priority() -> None:
    """Run the calling thread at nice :data:`PREFETCH_NICE` where the OS has per-thread priorities
    (Linux); elsewhere nothing changes.

    The token waits on the compute thread, while the prefetch thread runs up to
    :data:`~edgert_core.plan.PREFETCH_DEPTH` stages ahead and has slack. On a device with few cores,
    when both want the same core the scheduler should give it to the compute thread: on the
    reference 2-core machine this made streamed SmolLM2 decode about 1.2x faster at 128 MiB."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREFETCH_NICE)


def _limit_backend_threads(backend: KernelBackend, threads: int) -> Callable[[], None] | None:
    """Lower a backend's kernel threads (:attr:`KernelBackend.threads`) to at most ``threads`` until
    the returned function is called; ``None`` when it has no threads or already uses no more.

    The same reason as :func:`_limit_blas_threads`: with kernel threads on every core, the prefetch
    thread (at a lower priority) waits for a core and its loads stop hiding behind the compute. On
    the reference 2-core machine SmolLM2 on the ``neon`` backend's x86 path at a 32 MiB budget
    decoded about 21 tok/s with two kernel threads and 30 tok/s with one."""
    before = backend.threads
    if before is None or before <= threads:
        return None
    backend.threads = threads

    def restore() -> None:
        backend.threads = before

    return restore


def _limit_blas_threads(threads: int) -> Callable[[], None] | None:
    """Limit the BLAS library to ``threads`` threads until the returned function is called; ``None``
    when ``threadpoolctl`` is not installed (then nothing changes).

    With prefetch the loader thread copies weights while the main thread computes. Both are
    memory-bound, and on a device with few cores BLAS threads that spin-wait for a core held by the
    loader slow every matrix product down (on two cores the compute time about doubled): one core
    fewer for BLAS lets the copy run beside the compute instead of against it."""
    try:
        threadpoolctl: Any = importlib.import_module("threadpoolctl")
    except ImportError:
        return None
    limiter = threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    restore: Callable[[], None] = limiter.restore_original_limits
    return restore


def _warm_up_libraries() -> None:
    """Library start-up that a run would otherwise do after the baseline RSS is taken, done before
    it: that is start-up, like importing numpy, not memory of this run.

    - One small matrix product and one matrix-vector product, so the BLAS library maps and touches
      its per-thread work buffers (about 1 MiB, once per process, whatever the model).
    - ``numpy.random``, which numpy imports on first use and sampling uses (about 2 MiB of
      extension modules)."""
    a = np.ones((8, 64), dtype=np.float32)
    w = np.ones((256, 64), dtype=np.float32)
    _ = a @ w.T
    _ = w @ a[0]
    importlib.import_module("numpy.random")


# -- the three states -------------------------------------------------------------------------------


class Engine(_Step):
    """The idle engine: a validated model and a backend, no plan yet."""

    def __init__(self, model: ValidatedModel, backend: NumpyBackend) -> None:
        self.model = model
        self.backend = backend
        self.layout = model.layout().with_memory_bytes(backend.weight_nbytes)

    def plan(
        self,
        context: PlanningContext,
        strategy: str | ExecutionPlan = "auto",
        registry: PluginRegistry | None = None,
    ) -> PlannedEngine:
        """Make (or take) the plan: ``strategy`` is a strategy name or ``auto`` (planned with the
        installed strategies of ``registry``), or a ready :class:`ExecutionPlan`."""
        self._check("plan")
        if isinstance(strategy, ExecutionPlan):
            plan = strategy
        else:
            from edgert_core.planner import plan_with
            from edgert_core.plugins import load_registry

            plan = plan_with(registry or load_registry(), strategy, self.layout, context)
        self._consume("plan", "planned (Engine.plan was called)")
        return PlannedEngine(self.model, self.backend, self.layout, plan, context)


class PlannedEngine(_Step):
    """A model with its plan; :meth:`prepare` makes the buffers and returns a :class:`ReadyEngine`."""

    def __init__(self, model: ValidatedModel, backend: NumpyBackend, layout: ModelLayout,
                 plan: ExecutionPlan, context: PlanningContext) -> None:
        self.model = model
        self.backend = backend
        self.layout = layout
        self.plan = plan
        self.context = context

    def prepare(
        self,
        *,
        weight_cache: bool | None = None,
        notify: Callable[[str], None] | None = None,
        poison: bool = False,
    ) -> ReadyEngine:
        """Record the baseline RSS (and reset the OS's peak), make the pool, write the prepared-weights
        cache if it is needed and missing, allocate the KV cache and load the resident weights.

        ``weight_cache``: use the prepared-weights cache when the plan streams weights that need
        converting (default: unless ``EDGERT_WEIGHT_CACHE=0``). ``notify`` gets one-line messages for
        the user (the cache being written)."""
        self._consume("prepare", "prepared (PlannedEngine.prepare was called)")
        return ReadyEngine(self, weight_cache=weight_cache, notify=notify, poison=poison)


class ReadyEngine(_Step):
    """Prepared buffers; :meth:`forward` and :meth:`generate` run the model. :meth:`close` gives
    every pool byte back and joins the prefetch thread."""

    def __init__(self, planned: PlannedEngine, *, weight_cache: bool | None,
                 notify: Callable[[str], None] | None, poison: bool) -> None:
        self.model = planned.model
        self.backend = planned.backend
        self.layout = planned.layout
        self.plan = planned.plan
        self.context = planned.context
        self.config = self.model.config
        self.max_context = self.context.max_context
        self.transformer = Transformer(self.config, self.backend, self.max_context)
        self.cached_ids: list[int] = []  # the tokens whose K/V are in the cache, in order
        self.on_stage: Callable[[str, int], None] | None = None  # hook for monitors: (kind, index)
        self.times = EngineTimes()
        self._times_lock = threading.Lock()
        self._notify = notify
        self._resident: dict[int, LoadedStage] = {}
        self._head: LoadedStage | None = None
        self._reservation: PoolBuffer | None = None
        self._kv_buffer: PoolBuffer | None = None
        self._slots: list[PoolBuffer] = []  # streamed stages load into these, in turn
        self._restore_blas: Callable[[], None] | None = None
        self._restore_threads: Callable[[], None] | None = None
        self.weight_cache_built = False
        self.weight_cache_path: str | None = None

        release_freed_memory_promptly()  # numpy temporaries go back to the OS when freed
        _warm_up_libraries()
        self.baseline_rss_bytes = current_rss_bytes()  # just before the first weight is read
        self.peak_scope = "window" if reset_peak_rss() else "process"
        self.pool = MemoryPool(self.context.budget_bytes, poison=poison)
        try:
            self.reader = self._open_weights(weight_cache)
            self.reader.pool = self.pool
            self._stages = self._make_stages()
            self._group_stages = self._count_group_stages()
            self._allocate()
        except BaseException:
            self._teardown()
            raise
        self._pipeline = StagePipeline(
            [s for s, resident in self._stages if not resident], self._slots, self._fill_slot,
            self._slot_views, self.plan.prefetch, self.times, self._times_lock,
            poison=self._poison_slot if poison else None,
        )
        if self._pipeline.prefetch:
            spare_one = max(1, usable_cpus() - 1)
            self._restore_blas = _limit_blas_threads(spare_one)
            self._restore_threads = _limit_backend_threads(self.backend, spare_one)

    # -- setup ------------------------------------------------------------------------------------
    def _tensor_order(self) -> list[str]:
        """Every tensor in load order: layer by layer (fused weights back to back), then the head,
        then embeddings that are not the head's."""
        names: list[str] = []
        for i in range(len(self.layout.layers)):
            names += self._layer_tensors(i)
        names += [*final_norm_names(self.config.architecture), output_name(self.config)]
        for info in self.layout.embeddings:
            if info.name not in names:
                names.append(info.name)
        return names

    def _layer_tensors(self, index: int) -> list[str]:
        """Layer ``index``'s tensors part by part (:data:`BLOCK_PARTS` order), fused weights back to
        back at the start of their part: the order of the prepared-weights file, so that a stage of
        consecutive parts is one contiguous read."""
        return [n for p in range(len(BLOCK_PARTS[self.config.architecture]))
                for n in self._part_tensors(index, p)]

    def _part_tensors(self, index: int, part: int) -> list[str]:
        arch = self.config.architecture
        prefix = layer_prefix(arch, index)
        order = [prefix + n for parts in FUSIONS[arch].values() for n in parts]
        names = [t.name for t in self.layout.layers[index].tensors
                 if block_part(arch, t.name) == part]
        names.sort(key=lambda n: order.index(n) if n in order else len(order))
        return names

    def _open_weights(self, weight_cache: bool | None) -> WeightReader:
        forms: dict[str, TensorForm] = {}
        probes: dict[tuple[object, ...], TensorForm] = {}
        for name in self._tensor_order():
            entry = self.model.entry(name)
            info = entry.info
            key = (info.dtype, len(info.shape), info.shape[-1] if len(info.shape) == 2 else info.shape,
                   entry.transposed)
            probe = probes.get(key)
            if probe is None:
                probe = probes[key] = probe_form(self.backend, info, entry.transposed)
            if len(info.shape) == 2:
                probe = replace(probe, shape=(info.shape[0], *probe.shape[1:]),
                                nbytes=probe.row_nbytes * info.shape[0])
            forms[name] = probe
        identity = self.model.file_identity()
        if identity is None:
            return WeightReader(self.model, self.backend, forms, None, "synthetic")
        wanted = enabled_by_env() if weight_cache is None else weight_cache
        converts = any(not f.identical for f in forms.values())
        streams = self.plan.streamed_bytes_per_token(self.layout) > 0
        if not (wanted and converts and streams):
            return WeightReader(self.model, self.backend, forms, None, "model-file")
        backend_id = f"{self.backend.name}:{type(self.backend).__module__}.{type(self.backend).__qualname__}"
        path = cache_path(self.model.name, identity, backend_id)
        self.weight_cache_path = str(path)
        prepared = open_prepared(path)
        if prepared is None or set(prepared.entries) != set(forms):
            if prepared is not None:
                prepared.close()
            source = source_record(identity, backend_id)
            self._build_cache(path, forms, source)
            self._remove_stale_caches(path, source)
            prepared = open_prepared(path)
            if prepared is None:
                raise EdgeRTError(
                    f"The prepared-weights cache {path} could not be read back after writing it."
                )
        return WeightReader(self.model, self.backend, forms, prepared, "prepared-cache")

    def _remove_stale_caches(self, path: Path, source: dict[str, Any]) -> None:
        removed = remove_stale(path, source)
        if removed and self._notify is not None:
            total = sum(n for _, n in removed)
            self._notify(
                f"edge-rt: removed {len(removed)} stale prepared-weights file(s) of "
                f"{self.model.name} ({total / 2**20:.0f} MiB) from {path.parent}: the model file "
                "or edge-rt's format changed since they were written."
            )

    def _build_cache(self, path: Path, forms: dict[str, TensorForm], source: dict[str, Any]) -> None:
        total = sum(f.nbytes for f in forms.values())
        if self._notify is not None:
            self._notify(
                f"edge-rt: writing the {self.backend.name} backend's prepared weights of "
                f"{self.model.name} ({total / 2**20:.0f} MiB, once) to {path}; later runs read them "
                "directly. Turn this off with EDGERT_WEIGHT_CACHE=0 or --no-weight-cache."
            )
        file_reader = WeightReader(self.model, self.backend, forms, None, "model-file")
        file_reader.pool = self.pool
        # The pool is empty here: the scratch, the buffer for tensors prepared whole and the chunk
        # share the plan's predicted peak, and the chunk holds the largest tensor prepared whole
        # when that fits (then nothing else is allocated while the file is written).
        budget = self.context.budget_bytes
        peak = self.plan.predicted_peak_bytes
        whole = [Piece(n, f) for n, f in forms.items()
                 if f.row_nbytes == 0 or self.model.entry(n).transposed]
        temporary = file_reader.temporary_bytes(whole)
        largest_whole = max((block_bytes(p.nbytes) for p in whole), default=PAGE_BYTES)
        limit = BUILD_CHUNK_BYTES if budget is None else min(BUILD_CHUNK_BYTES, budget // 8)
        scratch = None
        if file_reader.needs_scratch():
            room = (peak - temporary - largest_whole) // 2
            scratch = self.pool.allocate(file_reader.scratch_bytes(budget, room),
                                         label="loader scratch")
        room = peak - temporary - (0 if scratch is None else scratch.block_bytes)
        chunk_bytes = max(PAGE_BYTES, min(max(limit, largest_whole), room) // PAGE_BYTES * PAGE_BYTES)
        file_reader.scratch = scratch
        chunk: PoolBuffer | None = None
        try:
            if temporary:
                file_reader.whole = self.pool.allocate(temporary, label="whole-tensor file bytes")
            chunk = self.pool.allocate(chunk_bytes, label="prepared-weights chunk")
            with writing(path, source) as writer:
                for name, form in forms.items():
                    writer.begin(name, form.nbytes, form.dtype, form.shape)
                    if (form.row_nbytes == 0 or form.nbytes <= chunk_bytes
                            or self.model.entry(name).transposed):
                        pieces = [Piece(name, form)]
                    else:
                        step = max(1, chunk_bytes // form.row_nbytes)
                        pieces = [Piece(name, form, (a, min(form.shape[0], a + step)))
                                  for a in range(0, form.shape[0], step)]
                    for piece in pieces:
                        if piece.nbytes <= chunk_bytes:
                            out = chunk.array[: piece.nbytes]
                            file_reader.fill(piece, out)
                            writer.write(out)
                            del out
                        else:
                            with self.pool.allocate(piece.nbytes, label=f"prepared {name}") as big:
                                file_reader.fill(piece, big.array)
                                writer.write(big.array)
        finally:
            for buf in (chunk, file_reader.whole, scratch):
                if buf is not None:
                    buf.release()
            file_reader.scratch = file_reader.whole = None
            self.pool.trim()
        self.weight_cache_built = True

    def _make_stages(self) -> list[tuple[Stage, bool]]:
        """Every stage of a forward pass in order, with whether it is resident: a resident group is
        one stage; a streamed group is cut into stages by the plan's ``stage_bytes``."""
        forms = self.reader.forms
        stages: list[tuple[Stage, bool]] = []
        n_parts = len(BLOCK_PARTS[self.config.architecture])
        for gi, group in enumerate(self.plan.groups):
            label = f"group {gi} (layers {group.layers[0]}-{group.layers[-1]})"
            if group.resident:
                cuts = [[(i, p) for i in group.layers for p in range(n_parts)]]
            else:
                cuts = group_stages(self.layout, group.layers, self.plan.stage_bytes)
            for k, cut in enumerate(cuts):
                pieces = tuple(Piece(n, forms[n]) for i, p in cut for n in self._part_tensors(i, p))
                layers = tuple(dict.fromkeys(i for i, _ in cut))
                name = label if len(cuts) == 1 else f"{label} stage {k + 1}/{len(cuts)}"
                stages.append((Stage(name, layers, pieces, parts=tuple(cut), group=gi),
                               group.resident))
        norms = tuple(Piece(n, forms[n]) for n in final_norm_names(self.config.architecture))
        out = output_name(self.config)
        form = forms[out]
        if self.plan.head_resident or form.row_nbytes == 0:
            stages.append((Stage("head", (), (*norms, Piece(out, form)), head=True),
                           self.plan.head_resident))
            return stages
        rows = form.shape[0]
        n = len(head_slices(self.layout.head_bytes, self.plan.head_slice_bytes, rows))
        start = 0
        for k in range(n):
            count = rows // n + (1 if k < rows % n else 0)
            piece = Piece(out, form, (start, start + count))
            stages.append((Stage(f"head slice {k + 1}/{n}", (), (*(norms if k == 0 else ()), piece),
                                 head=True), False))
            start += count
        return stages

    def _count_group_stages(self) -> list[int]:
        """How many stages each plan group has (resident groups one)."""
        counts = [0] * len(self.plan.groups)
        for stage, _ in self._stages:
            if stage.group is not None:
                counts[stage.group] += 1
        return counts

    def _allocate(self) -> None:
        """The loader's scratch, the resident weights, the KV cache, the stage slots, and the
        activations' accounting block sized so the pool's peak equals the plan's predicted peak.

        The plan's rule counts weights, KV cache and activations; the loader's own buffers (its
        scratch, and the file bytes of a tensor prepared whole) come out of the activations' share:
        the scratch is sized to the room the plan leaves, and the accounting block leaves room for
        the largest temporary a streamed load takes (the reader's ``whole`` buffer). Resident weights
        load first, before the KV cache and the stage slots are held, so their loads' temporaries
        fit in the room those will take; that buffer goes back to the OS before the rest is
        allocated."""
        kv_shape = KVCache.shape(self.config, self.max_context)
        kv_specs: list[tuple[tuple[int, ...], type[np.float32]]] = [(kv_shape, np.float32)] * 2
        streamed = [s for s, resident in self._stages if not resident]
        slot_bytes = max((s.block_bytes for s in streamed), default=0)
        n_slots = slots_for(len(streamed), self.plan.prefetch)
        held = (block_bytes(pack_offsets(kv_specs)[1]) + n_slots * slot_bytes
                + sum(s.block_bytes for s, resident in self._stages if resident))
        stream_temporary = self.reader.temporary_bytes([p for s in streamed for p in s.pieces])
        room = self.plan.predicted_peak_bytes - held - stream_temporary
        if self.reader.needs_scratch():
            self.reader.scratch = self.pool.allocate(
                self.reader.scratch_bytes(self.context.budget_bytes, room), label="loader scratch"
            )
        resident_temporary = self.reader.temporary_bytes(
            [p for s, resident in self._stages if resident for p in s.pieces])
        self._set_whole_buffer(resident_temporary, "resident loads")
        for stage, resident in self._stages:
            if resident:
                loaded = self._load_resident(stage)
                if stage.group is None:
                    self._head = loaded
                else:  # keyed by plan group, as forward looks it up
                    self._resident[stage.group] = loaded
        self._set_whole_buffer(0, "")
        self.pool.trim()  # the resident loads' temporaries go back to the OS
        # no huge pages: the cache is written a position at a time, and its RSS should grow with the
        # tokens cached, not jump to the whole cache on the first token
        self._kv_buffer = self.pool.allocate_many(kv_specs, label="KV cache", hugepages=False)
        k, v = self._kv_buffer.arrays
        self.cache = KVCache(self.config, self.max_context, (k, v))
        del k, v
        for n in range(n_slots):
            self._slots.append(self.pool.allocate(slot_bytes, label=f"stage slot {n + 1}"))
        self._set_whole_buffer(stream_temporary, "streamed loads")
        fixed_acts = fixed_bytes(self.layout, self.context) - self.cache.nbytes
        reserve = self.plan.predicted_peak_bytes - self.pool.held_bytes
        reserve = min(reserve, fixed_acts) // PAGE_BYTES * PAGE_BYTES
        self.activation_reserve_bytes = max(0, reserve)
        if reserve > 0:
            self._reservation = self.pool.allocate(reserve, label="activations (accounting)")

    def _set_whole_buffer(self, nbytes: int, purpose: str) -> None:
        """Give the reader a ``whole`` buffer of ``nbytes`` for tensors prepared whole (0: none)."""
        if self.reader.whole is not None:
            self.reader.whole.release()
            self.reader.whole = None
        if nbytes > 0:
            self.reader.whole = self.pool.allocate(nbytes, label=f"whole-tensor file bytes ({purpose})")

    # -- loading ----------------------------------------------------------------------------------
    def _stage_views(self, stage: Stage, weights: dict[str, Weight]) -> list[tuple[LayerWeights, int]]:
        """The block parts of ``stage`` as (layer weights, part index), fused where the backend can."""
        arch = self.config.architecture
        by_layer = {
            i: LayerWeights.from_named(
                arch, i, {n: w for n, w in weights.items() if n.startswith(layer_prefix(arch, i))},
                self.backend.fuse_rows,
            )
            for i in stage.layers
        }
        return [(by_layer[i], p) for i, p in stage.parts]

    def _load_resident(self, stage: Stage) -> LoadedStage:
        """A resident stage in a pool buffer of its own, kept for the run."""
        buffer = self.pool.allocate_many(stage.specs, label=stage.label)
        try:
            self.reader.fill_stage(stage, buffer.raw)
            weights = self.reader.stage_weights(stage, buffer.raw)
            parts = self._stage_views(stage, weights)
        except BaseException:
            buffer.release()
            raise
        return LoadedStage(stage, weights, parts, buffer.release)

    def _fill_slot(self, index: int, slot: int) -> None:
        try:
            self.reader.fill_stage(self._pipeline.stages[index], self._slots[slot].raw)
        except EdgeRTError as exc:
            # the user's error without the frames below, which hold views of the slot's memory (the
            # pool could not unmap it while the caller keeps the exception)
            raise exc.with_traceback(None) from None

    def _slot_views(self, index: int, slot: int) -> tuple[dict[str, Weight],
                                                         list[tuple[LayerWeights, int]]]:
        stage = self._pipeline.stages[index]
        weights = self.reader.stage_weights(stage, self._slots[slot].raw)
        return weights, self._stage_views(stage, weights)

    def _poison_slot(self, slot: int) -> None:
        self._slots[slot].raw.fill(POISON_BYTE)

    # -- embeddings ----------------------------------------------------------------------------------
    def _embedding_rows(self, ids: NDArray[np.int64]) -> F32:
        """Token embedding rows: float32 ``[T, hidden]``."""
        name = token_embedding_name(self.config.architecture)
        if self._head is not None and output_name(self.config) == name:
            return self.backend.rows(self._head.weights[name], ids)
        return self.backend.to_float(self.reader.rows(name, ids))

    def _position_rows(self, start: int, stop: int) -> F32 | None:
        name = position_embedding_name(self.config.architecture)
        if name is None:
            return None
        return self.backend.to_float(self.reader.rows(name, np.arange(start, stop, dtype=np.int64)))

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, ids: Sequence[int], start: int, *, all_logits: bool = False) -> F32:
        """Run tokens ``ids`` at positions ``start..start+T-1`` (the cache must hold ``0..start-1``).

        Returns float32 ``[T, vocab]`` logits if ``all_logits`` else ``[1, vocab]`` for the last token.
        """
        self._check("forward")
        arr = np.asarray(ids, dtype=np.int64)
        t = len(arr)
        compute = 0.0
        x = self.transformer.embed(self._embedding_rows(arr), self._position_rows(start, start + t))
        streamed = 0
        for gi, group in enumerate(self.plan.groups):
            if self.on_stage is not None:
                self.on_stage("group", gi)
            if group.resident:
                c0 = time.perf_counter()
                x = self.transformer.run_layers(self._resident[gi].layers, x, self.cache, start)
                compute += time.perf_counter() - c0
                continue
            state = BlockState(x)
            for _ in range(self._group_stages[gi]):
                loaded = self._pipeline.take(streamed)
                streamed += 1
                try:
                    c0 = time.perf_counter()
                    state = self.transformer.run_parts(loaded.parts, state, self.cache, start)
                    compute += time.perf_counter() - c0
                finally:
                    loaded.release()
                del loaded
            x = state.hidden
        if self.on_stage is not None:
            self.on_stage("head", 0)
        h = x if all_logits else x[-1:]
        vocab = self.config.dims.vocab
        extra = None
        if h.shape[0] > 1:  # more logits rows than the plan's one: count them
            extra = self.pool.allocate(h.shape[0] * vocab * 4, label="logits of every position")
        try:
            logits = np.empty((h.shape[0], vocab), dtype=np.float32)
            c0 = time.perf_counter()
            if self._head is not None:
                normed = self.transformer.final_norm(h, self._head.weights)
                self.transformer.project(normed, self._head.weights[output_name(self.config)], logits)
                compute += time.perf_counter() - c0
            else:
                compute += time.perf_counter() - c0
                normed = None
                out = output_name(self.config)
                while streamed < len(self._pipeline.stages):
                    loaded = self._pipeline.take(streamed)
                    streamed += 1
                    try:
                        c0 = time.perf_counter()
                        if normed is None:
                            normed = self.transformer.final_norm(h, loaded.weights)
                        piece = next(p for p in loaded.stage.pieces if p.name == out)
                        assert piece.rows is not None
                        a, b = piece.rows
                        self.transformer.project(normed, loaded.weights[out], logits[:, a:b])
                        compute += time.perf_counter() - c0
                    finally:
                        loaded.release()
                    del loaded
        finally:
            if extra is not None:
                extra.release()
                # the pool caches a released block for reuse by its size; one per length asked for
                # would pile up, so this one-off block goes back at once
                self.pool.trim()
        self.cache.length = start + t
        del self.cached_ids[start:]
        self.cached_ids.extend(int(i) for i in arr)
        with self._times_lock:
            self.times.compute += compute
        return logits

    def end_of_step(self) -> None:
        """Give back a stage loaded ahead for a forward pass that will not come (end of a
        generation)."""
        self._pipeline.drain()

    # -- generation ----------------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int,
        sampling: SamplingParams | None = None,
        stop_ids: Sequence[int] = (),
        prefill_chunk: int | None = None,
        stats: GenerationStats | None = None,
    ) -> Iterator[int]:
        """Token ids after ``prompt_ids`` (see :func:`edgert_core.generate.generate_ids`)."""
        from edgert_core.generate import generate_ids

        self._check("generate")
        return generate_ids(self, prompt_ids, max_tokens=max_tokens, sampling=sampling,
                            stop_ids=stop_ids, prefill_chunk=prefill_chunk, stats=stats)

    @property
    def weight_source(self) -> WeightSource:
        return self.reader.source

    @property
    def prefetch(self) -> bool:
        return self._pipeline.prefetch

    # -- closing -----------------------------------------------------------------------------------
    def _teardown(self) -> None:
        pipeline = getattr(self, "_pipeline", None)
        if pipeline is not None:
            pipeline.close()
        for name in ("_restore_blas", "_restore_threads"):
            restore = getattr(self, name, None)
            setattr(self, name, None)
            if restore is not None:
                restore()
        for loaded in self._resident.values():
            loaded.release()
        self._resident = {}
        if self._head is not None:
            self._head.release()
            self._head = None
        cache = getattr(self, "cache", None)
        if cache is not None:
            cache.release()
        reader: WeightReader | None = getattr(self, "reader", None)
        for buf in (self._kv_buffer, self._reservation, None if reader is None else reader.scratch,
                    None if reader is None else reader.whole, *self._slots):
            if buf is not None:
                buf.release()
        self._slots = []
        self._kv_buffer = self._reservation = None
        if reader is not None:
            reader.scratch = reader.whole = None
            if reader.prepared is not None:
                reader.prepared.close()
        self.model.close()
        self.pool.close()

    def close(self) -> None:
        """Join the prefetch thread, release every buffer and close the pool (which then holds zero
        bytes) and the files. Closing twice is a no-op."""
        if self._consumed_by is not None:
            return
        self._consumed_by = "closed (ReadyEngine.close was called)"
        self._teardown()

    def __enter__(self) -> ReadyEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
