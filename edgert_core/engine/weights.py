"""Weight reading: the backend's declared form of each tensor (:func:`tensor_form`), the
:class:`WeightReader` that fills pool memory with prepared tensors, and opening (and, the first time,
writing) the prepared-weights cache (:func:`open_weights`).

Where weights come from: see :mod:`edgert_core.weight_cache`: the backend's prepared bytes from the
prepared-weights cache, or the model file, read straight into the pool buffer when the prepared form
is the file's bytes and otherwise read through the scratch buffer and prepared (dequantized) into the
pool buffer row chunk by row chunk. All reads are positional reads (no mapping of the model file)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from edgert_core.backends.base import KernelBackend, TensorForm, Weight
from edgert_core.budget import format_bytes
from edgert_core.engine.stages import Piece, Stage
from edgert_core.errors import EdgeRTError, MemoryPoolError
from edgert_core.layout import ModelLayout, TensorInfo
from edgert_core.loaders.base import ValidatedModel, row_nbytes
from edgert_core.memory.pool import (
    PAGE_BYTES,
    MemoryPool,
    PoolBuffer,
    align_up,
    block_bytes,
    pack_offsets,
)
from edgert_core.plan import ExecutionPlan
from edgert_core.weight_cache import (
    PreparedWeights,
    cache_path,
    enabled_by_env,
    open_prepared,
    remove_stale,
    source_record,
    writing,
)

U8 = NDArray[np.uint8]

SCRATCH_BYTES = 256 * 1024
"""The loader's buffer for file bytes that are dequantized row chunk by row chunk."""

BUILD_CHUNK_BYTES = 4 * 1024 * 1024
"""Prepared bytes per step while the prepared-weights cache is written."""

WeightSource = Literal["prepared-cache", "model-file", "synthetic"]


def tensor_form(backend: KernelBackend, info: TensorInfo, transposed: bool) -> TensorForm:
    """The backend's declared form of ``info`` (:meth:`KernelBackend.prepared_form`), checked for
    what the engine relies on; ``identical`` only when the file stores the tensor untransposed."""
    form = backend.prepared_form(info)
    if form.nbytes != form.dtype.itemsize * math.prod(form.shape):
        raise EdgeRTError(
            f"Backend {backend.name!r} declares {form.nbytes} bytes for tensor {info.name}, not the "
            f"{form.dtype} array of shape {form.shape} it declares; fix its prepared_form."
        )
    if len(info.shape) == 2 and (
        not form.shape or form.shape[0] != info.shape[0] or form.nbytes != form.row_nbytes * info.shape[0]
    ):
        raise EdgeRTError(
            f"Backend {backend.name!r} holds tensor {info.name} in a form whose rows are not "
            "contiguous; the engine cannot stream it."
        )
    if form.identical and (transposed or form.nbytes != info.nbytes):
        form = replace(form, identical=False)
    return form


class WeightReader:
    """Fills pool arrays with prepared tensors, from the prepared-weights cache or the model file."""

    def __init__(self, model: ValidatedModel, backend: KernelBackend, forms: dict[str, TensorForm],
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
        # the prepared-weights file this reader reads (or would, had it been wanted), and whether
        # opening it wrote it
        self.cache_path: str | None = None
        self.cache_built = False

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

    def set_read_mode(self, mode: str) -> None:
        """Read the model file and the prepared-weights file in ``mode`` from now on."""
        self.model.set_read_mode(mode)
        if self.prepared is not None:
            self.prepared.reader.set_read_mode(mode)

    def read_mode(self) -> str:
        """The read mode of the file streamed weights come from (``drop`` where ``direct`` was
        refused)."""
        if self.prepared is not None:
            return self.prepared.reader.read_mode
        return self.model.read_mode()

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
        ``stage.offsets``: one read when they lie that way in the prepared-weights file; pieces
        read from the model file as they are stored, with a read per run of tensors that lie
        together in the file (:meth:`ValidatedModel.read_pieces`) instead of one per tensor."""
        pieces = stage.pieces
        contiguous = self._contiguous_stages.get(pieces)
        if contiguous is None:
            contiguous = self._contiguous_stages[pieces] = self._contiguous(pieces)
        if contiguous:
            assert self.prepared is not None
            first = self._cache_offset(pieces[0])
            self.prepared.read_into(first, stage.nbytes, raw[: stage.nbytes], what=pieces[0].name)
            return
        direct: list[tuple[str, tuple[int, int] | None, U8]] = []
        for piece, off in zip(pieces, stage.offsets, strict=True):
            out = raw[off : off + piece.nbytes]
            if self.prepared is None and self.source == "model-file" and self.form_of(piece).identical:
                direct.append((piece.name, piece.rows, out))  # the file's bytes as they are
            else:
                self.fill(piece, out)
        if direct:  # tensors that lie together in the file, read together
            self.model.read_pieces(direct)

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
                self._prepare(part, raw, out[lo : lo + (b - a) * form.row_nbytes])
            del scratch, raw

    def form_of(self, piece: Piece) -> TensorForm:
        return self.forms[piece.name]

    def _prepare(self, info: TensorInfo, raw: U8, out: U8) -> None:
        """``prepare_weight`` into pool memory, which the engine then views through the declared
        form: a backend that put the tensor anywhere but the start of ``out`` is stopped here."""
        data = self.backend.prepare_weight(info, raw, out).data
        if data.ctypes.data != out.ctypes.data:
            raise EdgeRTError(
                f"Backend {self.backend.name!r} did not prepare tensor {info.name} at the start of "
                "the memory it was given, as KernelBackend's memory rule requires; it cannot run "
                "under the engine's memory pool."
            )

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
                self._prepare(info, raw, out[: piece.nbytes])
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
                self._prepare(info, raw, out[: piece.nbytes])
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


# -- the prepared-weights cache --------------------------------------------------------------------


def tensor_forms(model: ValidatedModel, backend: KernelBackend,
                 names: Sequence[str]) -> dict[str, TensorForm]:
    """The prepared form of each tensor in ``names``, as the backend declares it."""
    return {name: tensor_form(backend, model.info(name), model.entry(name).transposed)
            for name in names}


def open_weights(
    model: ValidatedModel,
    backend: KernelBackend,
    layout: ModelLayout,
    plan: ExecutionPlan,
    pool: MemoryPool,
    order: Sequence[str],
    *,
    weight_cache: bool | None,
    budget_bytes: int | None,
    notify: Callable[[str], None] | None,
) -> WeightReader:
    """The reader of every tensor in ``order``: from the prepared-weights cache when it is wanted
    (``weight_cache``, default :func:`~edgert_core.weight_cache.enabled_by_env`) and the plan
    streams weights that need converting (written first when missing or stale), else from the
    model file. The cache is written with ``pool`` (empty here) within the plan's predicted peak."""
    forms = tensor_forms(model, backend, order)
    identity = model.file_identity()
    if identity is None:
        return WeightReader(model, backend, forms, None, "synthetic")
    wanted = enabled_by_env() if weight_cache is None else weight_cache
    converts = any(not f.identical for f in forms.values())
    streams = plan.streamed_bytes_per_token(layout) > 0
    if not (wanted and converts and streams):
        return WeightReader(model, backend, forms, None, "model-file")
    backend_id = f"{backend.name}:{type(backend).__module__}.{type(backend).__qualname__}"
    path = cache_path(model.name, identity, backend_id)
    prepared = open_prepared(path)
    built = False
    if prepared is None or set(prepared.entries) != set(forms):
        if prepared is not None:
            prepared.close()
        source = source_record(identity, backend_id)
        build_cache(path, model, backend, forms, source, pool, budget_bytes=budget_bytes,
                    peak_bytes=plan.predicted_peak_bytes, notify=notify)
        built = True
        remove_stale_caches(path, source, model.name, notify)
        prepared = open_prepared(path)
        if prepared is None:
            raise EdgeRTError(
                f"The prepared-weights cache {path} could not be read back after writing it."
            )
    reader = WeightReader(model, backend, forms, prepared, "prepared-cache")
    reader.cache_path = str(path)
    reader.cache_built = built
    return reader


def remove_stale_caches(path: Path, source: dict[str, Any], model_name: str,
                        notify: Callable[[str], None] | None) -> None:
    removed = remove_stale(path, source)
    if removed and notify is not None:
        total = sum(n for _, n in removed)
        notify(
            f"edge-rt: removed {len(removed)} stale prepared-weights file(s) of "
            f"{model_name} ({format_bytes(total)}) from {path.parent}: the model file "
            "or edge-rt's format changed since they were written."
        )


def build_cache(path: Path, model: ValidatedModel, backend: KernelBackend,
                forms: dict[str, TensorForm], source: dict[str, Any], pool: MemoryPool, *,
                budget_bytes: int | None, peak_bytes: int,
                notify: Callable[[str], None] | None) -> None:
    """Write the prepared form of every tensor of ``forms`` to ``path``, through buffers of
    ``pool`` that stay within ``peak_bytes`` (the plan's predicted peak)."""
    total = sum(f.nbytes for f in forms.values())
    if notify is not None:
        notify(
            f"edge-rt: writing the {backend.name} backend's prepared weights of "
            f"{model.name} ({format_bytes(total)}, once) to {path}; later runs read them "
            "directly. Turn this off with EDGERT_WEIGHT_CACHE=0 or --no-weight-cache."
        )
    file_reader = WeightReader(model, backend, forms, None, "model-file")
    file_reader.pool = pool
    # The pool is empty here: the scratch, the buffer for tensors prepared whole and the chunk
    # share the plan's predicted peak, and the chunk holds the largest tensor prepared whole
    # when that fits (then nothing else is allocated while the file is written).
    budget = budget_bytes
    peak = peak_bytes
    whole = [Piece(n, f) for n, f in forms.items()
             if f.row_nbytes == 0 or model.entry(n).transposed]
    temporary = file_reader.temporary_bytes(whole)
    largest_whole = max((block_bytes(p.nbytes) for p in whole), default=PAGE_BYTES)
    limit = BUILD_CHUNK_BYTES if budget is None else min(BUILD_CHUNK_BYTES, budget // 8)
    scratch = None
    if file_reader.needs_scratch():
        room = (peak - temporary - largest_whole) // 2
        scratch = pool.allocate(file_reader.scratch_bytes(budget, room),
                                label="loader scratch")
    room = peak - temporary - (0 if scratch is None else scratch.block_bytes)
    chunk_bytes = max(PAGE_BYTES, min(max(limit, largest_whole), room) // PAGE_BYTES * PAGE_BYTES)
    file_reader.scratch = scratch
    chunk: PoolBuffer | None = None
    try:
        if temporary:
            file_reader.whole = pool.allocate(temporary, label="whole-tensor file bytes")
        chunk = pool.allocate(chunk_bytes, label="prepared-weights chunk")
        with writing(path, source) as writer:
            for name, form in forms.items():
                writer.begin(name, form.nbytes, form.dtype, form.shape)
                if (form.row_nbytes == 0 or form.nbytes <= chunk_bytes
                        or model.entry(name).transposed):
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
                        with pool.allocate(piece.nbytes, label=f"prepared {name}") as big:
                            file_reader.fill(piece, big.array)
                            writer.write(big.array)
    finally:
        for buf in (chunk, file_reader.whole, scratch):
            if buf is not None:
                buf.release()
        file_reader.scratch = file_reader.whole = None
        pool.trim()


#: Decoded tokens whose disk reads the read-mode rule looks at before it settles (see
#: :func:`reads_say_drop`).
READ_MODE_WATCH_TOKENS = 3


def reads_say_drop(read_bytes: int, streamed_bytes_per_token: int) -> bool:
    """Whether one decoded token's disk reads (``/proc/self/io`` ``read_bytes``) show its streamed
    weights coming from disk rather than the page cache (more than half of them): then keeping them
    cached only evicts the pages the next token needs, and ``drop`` is faster."""
    return streamed_bytes_per_token > 0 and read_bytes * 2 > streamed_bytes_per_token
