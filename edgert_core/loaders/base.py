"""What every model source gives: a header-only description, then lazy per-tensor reads.

The lifecycle is ``loaded -> validate() -> validated``:

* A :class:`ModelSource` (``loaded``) has parsed headers only: the config, every tensor's canonical
  name, logical shape, file type, byte count and place in a file. No weight byte has been read.
* :meth:`ModelSource.validate` checks the architecture, every expected tensor's presence and shape,
  unexpected tensors, tensor types and that each tensor lies inside its file (a truncated download),
  and returns a :class:`ValidatedModel`, the only object that reads weights.

Reads return the tensor's bytes exactly as stored (``uint8 [nbytes]``) in the logical ``[out, in]``
row order; loaders do no math (dequantization belongs to the kernel backend). A caller may pass its
own buffer (``out=``), which is filled by a :class:`~edgert_core.memory.reader.FileRangeReader`
(positional reads, one open file per model file, shared by threads) so the file's pages never enter
the process's resident memory through a mapping.

NaN and infinite weights: checking a whole model at load would read every byte once more before the
first token, so the check runs on the bytes actually read instead: every value of a float tensor,
and the float16 scales of every block of a quantized one (the only place a block format can hold a
NaN or an infinity). A tensor range that passed is not checked again (streamed stages are read once
per token). A bad value raises :class:`ModelError` naming the tensor, before the first token.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from edgert_core.backends.numpy_ref import BLOCK_BYTES, FLOAT_BYTES, SUPPORTED_DTYPES, file_nbytes
from edgert_core.errors import ModelError
from edgert_core.layout import LayerInfo, ModelLayout, TensorInfo
from edgert_core.memory.reader import FileRangeReader, default_read_mode
from edgert_core.models.arch import arch_of
from edgert_core.models.arch import expected_shapes as arch_expected_shapes
from edgert_core.models.config import (
    ModelConfig,
    final_norm_names,
    layer_prefix,
    output_name,
    position_embedding_name,
    token_embedding_name,
)

if TYPE_CHECKING:
    from edgert_core.tokenizer import BaseTokenizer

U8 = NDArray[np.uint8]

#: Tensor types a model file may use (the dequantization lives in the numpy backend).
LOADABLE_DTYPES = SUPPORTED_DTYPES


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: ``info`` (canonical name, logical shape, type, bytes), the file, the
    absolute byte offset and the name the file uses. ``transposed``: the file stores ``[in, out]``
    (GPT-2's Conv1D) and reads transpose it to the logical ``[out, in]``."""

    info: TensorInfo
    file: Path
    offset: int
    file_name: str
    transposed: bool = False


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> logical shape of every tensor a model of ``config`` must have (from its
    architecture's table)."""
    return arch_expected_shapes(
        arch_of(config.architecture), config.dims, tied=config.tied_embeddings
    )


@dataclass(frozen=True)
class ModelPart:
    """Layers ``first..stop-1`` of a model of ``n_layers`` layers, as a model of their own (a stage
    of a pipeline across devices): its blocks are numbered from 0, the token embeddings run on the
    part that holds layer 0 and the head on the part that holds the last layer."""

    first: int
    stop: int
    n_layers: int

    def __post_init__(self) -> None:
        if not 0 <= self.first < self.stop <= self.n_layers:
            raise ValueError(f"layers {self.first}..{self.stop - 1} are not a part of a model of "
                             f"{self.n_layers} layers")

    @property
    def embeds(self) -> bool:
        """Whether this part looks up the token embeddings (it starts at layer 0)."""
        return self.first == 0

    @property
    def has_head(self) -> bool:
        """Whether this part runs the final norm and the output projection (it ends at the last
        layer)."""
        return self.stop == self.n_layers


class ModelSource:
    """A model whose headers are parsed (the ``loaded`` state). Subclasses fill ``config``,
    ``entries`` (canonical name -> :class:`TensorEntry`, in file order) and ``ignored``."""

    format: str = ""
    #: the layers of a bigger model this source is (``None``: the whole model)
    part: ModelPart | None = None

    def __init__(self, path: Path, name: str, config: ModelConfig, entries: dict[str, TensorEntry]):
        self.path = path
        self.name = name
        self.config = config
        self.entries = entries
        self.chat_template: str | None = None
        self._readers: dict[Path, FileRangeReader] = {}
        self._readers_lock = threading.Lock()
        self._read_mode: str | None = None  # None: each reader's default (EDGERT_READ_MODE)

    # -- header-only facts --------------------------------------------------------------------
    def layout(self) -> ModelLayout:
        """The model as the planner sees it, with file types and file bytes (``mem_bytes`` equal to
        ``nbytes``; convert with ``layout.with_memory_bytes(backend.weight_nbytes)``)."""
        cfg = self.config
        d = cfg.dims

        def info(name: str) -> TensorInfo:
            return self.entries[name].info

        layers = []
        for i in range(d.n_layers):
            p = layer_prefix(d.architecture, i)
            names = [n for n in self.entries if n.startswith(p)]
            layers.append(LayerInfo(i, tuple(info(n) for n in names)))
        emb = [token_embedding_name(d.architecture)]
        pos = position_embedding_name(d.architecture)
        if pos is not None:
            emb.append(pos)
        head = [*final_norm_names(d.architecture), output_name(cfg)]
        if self.part is not None and not self.part.has_head:
            head = []
        return ModelLayout(
            name=self.name,
            dims=d,
            layers=tuple(layers),
            embeddings=tuple(info(n) for n in emb if n in self.entries),
            head=tuple(info(n) for n in head if n in self.entries),
        )

    @property
    def dtypes(self) -> frozenset[str]:
        """Tensor types used by the file."""
        return frozenset(e.info.dtype for e in self.entries.values())

    def tokenizer(self) -> BaseTokenizer | None:
        """The model's tokenizer, or ``None`` when its files carry none."""
        return None

    # -- validation ---------------------------------------------------------------------------
    def unexpected_ok(self, name: str) -> bool:
        """Whether an extra tensor may be ignored (buffers some checkpoints carry)."""
        return False

    def file_sizes(self) -> dict[Path, int]:
        return {p: p.stat().st_size for p in {e.file for e in self.entries.values()}}

    def validate(self) -> ValidatedModel:
        """Check the model against its config (see the module docstring); return the readable model."""
        expected = expected_shapes(self.config)
        for name, shape in expected.items():
            entry = self.entries.get(name)
            if entry is None:
                raise ModelError(
                    f"{self.path} has no tensor {self._file_name_hint(name)}, which a "
                    f"{self.config.architecture} model with these dimensions needs; the file is "
                    "incomplete or not this kind of model."
                )
            if entry.info.shape != shape:
                raise ModelError(
                    f"Tensor {entry.file_name} in {entry.file} has shape {list(entry.info.shape)} "
                    f"but the model's config needs {list(shape)}; the file and its config disagree."
                )
        for name, entry in self.entries.items():
            if name not in expected and not self.unexpected_ok(name):
                raise ModelError(
                    f"Tensor {entry.file_name} in {entry.file} is not part of a "
                    f"{self.config.architecture} model; the file is not a supported model."
                )
        for entry in self.entries.values():
            dtype = entry.info.dtype
            if dtype not in LOADABLE_DTYPES:
                raise ModelError(
                    f"Tensor {entry.file_name} in {entry.file} has type {dtype}, which edge-rt "
                    f"cannot load; supported types: {', '.join(sorted(LOADABLE_DTYPES))}. Use a "
                    "file quantized to one of those."
                )
            try:
                wanted = file_nbytes(dtype, entry.info.shape)
            except ModelError as err:
                raise ModelError(f"Tensor {entry.file_name} in {entry.file}: {err}") from None
            if entry.info.nbytes != wanted:
                raise ModelError(
                    f"Tensor {entry.file_name} in {entry.file} declares {entry.info.nbytes} bytes "
                    f"but a {dtype} tensor of shape {list(entry.info.shape)} takes "
                    f"{wanted}; the file is corrupt."
                )
        sizes = self.file_sizes()
        for entry in self.entries.values():
            end = entry.offset + entry.info.nbytes
            if end > sizes[entry.file]:
                raise ModelError(
                    f"{entry.file} is truncated: tensor {entry.file_name} ends at byte {end} but the "
                    f"file has {sizes[entry.file]} bytes; download it again."
                )
        return ValidatedModel(self)

    def _file_name_hint(self, name: str) -> str:
        return name

    # -- reads (used through ValidatedModel) ---------------------------------------------------
    def reader(self, file: Path) -> FileRangeReader:
        """The open reader of ``file`` (opened on first use, shared by threads)."""
        with self._readers_lock:
            reader = self._readers.get(file)
            if reader is None or reader.closed:
                reader = self._readers[file] = FileRangeReader(file, read_mode=self._read_mode)
            return reader

    def read_mode(self) -> str:
        """The read mode of this model's open readers (the first one's: they share it), or the
        mode new ones get."""
        with self._readers_lock:
            readers = [r for r in self._readers.values() if not r.closed]
            mode = self._read_mode
        if readers:
            return readers[0].read_mode
        return mode if mode is not None else default_read_mode()

    def set_read_mode(self, mode: str) -> None:
        """How this model's files are read from now on (see :mod:`edgert_core.memory.reader`)."""
        with self._readers_lock:
            self._read_mode = mode
            readers = list(self._readers.values())
        for reader in readers:
            if not reader.closed:
                reader.set_read_mode(mode)

    def read_into(self, entry: TensorEntry, out: U8, byte_start: int = 0) -> None:
        """Fill ``out`` (``uint8``) with the file bytes of ``entry`` from ``byte_start``."""
        self.reader(entry.file).read_into(
            entry.offset + byte_start, len(out), out, what=f"tensor {entry.file_name!r}"
        )

    def file_identity(self) -> tuple[tuple[str, int, int], ...] | None:
        """``(path, size, mtime_ns)`` of every file holding tensors (what a prepared-weights cache
        is keyed by); ``None`` for sources without files (the synthetic model)."""
        out = []
        for file in sorted({e.file for e in self.entries.values()}):
            if not file.is_file():
                return None
            st = file.stat()
            out.append((str(file.resolve()), st.st_size, st.st_mtime_ns))
        return tuple(out)

    def close(self) -> None:
        """Close the files opened for reads (they reopen on the next read)."""
        with self._readers_lock:
            readers = list(self._readers.values())
            self._readers.clear()
        for reader in readers:
            reader.close()


class ValidatedModel:
    """A validated model: its config, layout, tokenizer and lazy reads of its tensors."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self.path = source.path
        self.name = source.name
        self.config = source.config
        self.chat_template = source.chat_template
        self._layout: ModelLayout | None = None
        self._finite: set[tuple[str, int, int]] = set()  # (name, first byte, end) checked

    @property
    def format(self) -> str:
        return self.source.format

    def layout(self) -> ModelLayout:
        if self._layout is None:
            self._layout = self.source.layout()
        return self._layout

    @property
    def dtypes(self) -> frozenset[str]:
        return self.source.dtypes

    def tokenizer(self) -> BaseTokenizer | None:
        return self.source.tokenizer()

    def info(self, name: str) -> TensorInfo:
        """The description of tensor ``name`` (canonical name)."""
        return self._entry(name).info

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self.source.entries[name]
        except KeyError:
            raise ModelError(f"{self.path} has no tensor {name}.") from None

    def entry(self, name: str) -> TensorEntry:
        """Where tensor ``name`` (canonical name) lives."""
        return self._entry(name)

    def file_identity(self) -> tuple[tuple[str, int, int], ...] | None:
        return self.source.file_identity()

    def read_tensor(self, name: str, out: U8 | None = None, scratch: U8 | None = None) -> U8:
        """The stored bytes of tensor ``name``: ``uint8 [nbytes]`` in logical ``[out, in]`` row order.

        ``out``: a caller-owned ``uint8`` buffer of at least ``nbytes``, filled in place and returned
        (trimmed to ``nbytes``); otherwise a new array. ``scratch``: a caller-owned ``uint8`` buffer of
        at least ``nbytes`` for the stored bytes of a transposed tensor (otherwise a new array)."""
        entry = self._entry(name)
        n = entry.info.nbytes
        buf = _buffer(name, n, out)
        if not entry.transposed:
            self.source.read_into(entry, buf)
            self._check_finite(entry, buf, 0)
            return buf
        # stored [in, out]: read, then write the transpose (a layout change, no arithmetic)
        rows, cols = entry.info.shape
        item = FLOAT_BYTES[entry.info.dtype]
        stored = np.empty(n, dtype=np.uint8) if scratch is None else scratch[:n]
        self.source.read_into(entry, stored)
        self._check_finite(entry, stored, 0)
        dt = np.dtype(f"V{item}")
        buf.view(dt).reshape(rows, cols)[...] = stored.view(dt).reshape(cols, rows).T
        return buf

    def read_pieces(self, items: Sequence[tuple[str, tuple[int, int] | None, U8]]) -> None:
        """Fill each ``out`` (``uint8``, at least the bytes asked for) of ``items`` with the stored
        bytes of tensor ``name``, or of its rows ``start..stop-1`` where given, as
        :meth:`read_tensor` and :meth:`read_rows` do, reading tensors that lie next to each other
        in a file with one request (:meth:`FileRangeReader.read_spans`)."""
        by_file: dict[Path, list[tuple[int, U8]]] = {}
        checks: list[tuple[TensorEntry, U8, int]] = []
        for name, rows, out in items:
            entry = self._entry(name)
            if entry.transposed:
                if rows is None:
                    self.read_tensor(name, out=out)
                else:
                    self.read_rows(name, rows[0], rows[1], out=out)
                continue
            start, n = (0, entry.info.nbytes) if rows is None else _row_span(name, entry, *rows)
            buf = _buffer(name, n, out)
            by_file.setdefault(entry.file, []).append((entry.offset + start, buf))
            checks.append((entry, buf, start))
        for file, parts in by_file.items():
            self.source.reader(file).read_spans(parts, what=f"{len(parts)} tensors")
        for entry, buf, start in checks:
            self._check_finite(entry, buf, start)

    def read_rows(self, name: str, start: int, stop: int, out: U8 | None = None) -> U8:
        """The stored bytes of rows ``start..stop-1`` of a 2-D tensor (``uint8 [(stop-start) *
        row_bytes]``); rows of GGUF block formats are whole blocks, so a row range is contiguous."""
        return self._read_rows(name, start, stop, out, remember=True)

    def _read_rows(self, name: str, start: int, stop: int, out: U8 | None, *, remember: bool) -> U8:
        entry = self._entry(name)
        byte_start, n = _row_span(name, entry, start, stop)
        if entry.transposed:
            part = self.read_tensor(name)[byte_start : byte_start + n]
            if out is None:
                return part.copy()
            out[: len(part)] = part
            return out[: len(part)]
        buf = np.empty(n, dtype=np.uint8) if out is None else out[:n]
        self.source.read_into(entry, buf, byte_start)
        self._check_finite(entry, buf, byte_start, remember=remember)
        return buf

    def read_row_set(self, name: str, ids: NDArray[np.int64], out: U8 | None = None) -> U8:
        """Bytes of the rows ``ids`` (``int64 [T]``) of a 2-D tensor, in that order:
        ``uint8 [T, row_bytes]`` (embedding lookups without loading the table); into ``out`` when
        given (``uint8 [T, row_bytes]``)."""
        entry = self._entry(name)
        rb = row_nbytes(entry.info)
        if out is None:
            out = np.empty((len(ids), rb), dtype=np.uint8)
        for j, i in enumerate(ids.tolist()):  # single rows, checked on every read: remembering
            self._read_rows(name, i, i + 1, out[j], remember=False)  # them would grow with the vocab
        return out

    def _check_finite(self, entry: TensorEntry, raw: U8, byte_start: int, *,
                      remember: bool = True) -> None:
        key = (entry.info.name, byte_start, byte_start + len(raw))
        if key in self._finite:
            return
        if has_nonfinite(entry.info.dtype, raw):
            raise ModelError(
                f"Tensor {entry.file_name} in {entry.file} holds NaN or infinite values; the file "
                "is corrupt, so download or convert it again."
            )
        if remember:
            self._finite.add(key)

    def set_read_mode(self, mode: str) -> None:
        """How the model's files are read from now on (see :mod:`edgert_core.memory.reader`)."""
        self.source.set_read_mode(mode)

    def read_mode(self) -> str:
        return self.source.read_mode()

    def close(self) -> None:
        self.source.close()

    @property
    def part(self) -> ModelPart | None:
        """The layers of a bigger model this model is (``None``: the whole model)."""
        return self.source.part

    def layers(self, first: int, stop: int) -> ValidatedModel:
        """Layers ``first..stop-1`` of this (whole) model as a model of their own
        (:class:`ModelPart`): blocks renumbered from 0, the head only on the part that ends at the
        last layer. It reads the same files (opened anew) and has no tokenizer."""
        if self.part is not None:
            raise ValueError("a part of a model cannot be cut again; cut the whole model")
        return ValidatedModel(PartSource(self.source, ModelPart(first, stop, self.config.dims.n_layers)))


class PartSource(ModelSource):
    """Some consecutive layers of a validated model (see :meth:`ValidatedModel.layers`): the same
    tensor entries, the blocks' renamed to their place in the part, the other blocks' left out."""

    def __init__(self, whole: ModelSource, part: ModelPart) -> None:
        arch = whole.config.architecture
        prefixes = [layer_prefix(arch, i) for i in range(part.n_layers)]
        entries: dict[str, TensorEntry] = {}
        for name, entry in whole.entries.items():
            block = next((i for i, p in enumerate(prefixes) if name.startswith(p)), None)
            if block is None:  # a global tensor (embeddings, head, RoPE factors)
                entries[name] = entry
            elif part.first <= block < part.stop:
                local = layer_prefix(arch, block - part.first) + name[len(prefixes[block]):]
                entries[local] = replace(entry, info=replace(entry.info, name=local))
        dims = replace(whole.config.dims, n_layers=part.stop - part.first)
        name = f"{whole.name} layers {part.first}-{part.stop - 1}"
        super().__init__(whole.path, name, replace(whole.config, dims=dims), entries)
        self.format = whole.format
        self.part = part
        self.chat_template = None

    def file_identity(self) -> tuple[tuple[str, int, int], ...] | None:
        """None: a part keeps no prepared-weights cache (its tensor names are the part's, not the
        file's, so a cache of the whole model's and one of a part's must never be mixed up)."""
        return None


def _row_span(name: str, entry: TensorEntry, start: int, stop: int) -> tuple[int, int]:
    """Byte offset and length of rows ``start..stop-1`` of tensor ``name`` in its logical
    ``[out, in]`` order; a range outside the tensor is a ``ValueError``."""
    rows = entry.info.shape[0]
    if not 0 <= start <= stop <= rows:
        raise ValueError(f"rows {start}:{stop} out of range for {name} with {rows} rows")
    rb = row_nbytes(entry.info)
    return start * rb, (stop - start) * rb


def _buffer(name: str, n: int, out: U8 | None) -> U8:
    """``out`` trimmed to ``n`` bytes (a new array without it); one too small is a ``ValueError``."""
    buf = np.empty(n, dtype=np.uint8) if out is None else out[:n]
    if len(buf) < n:
        raise ValueError(f"buffer of {len(buf)} bytes is too small for {name} ({n} bytes)")
    return buf


#: Values per step of the NaN/Inf check (keeps its temporaries small under a memory budget).
_CHECK_CHUNK = 1 << 16
#: Exponent bits that are all ones in a NaN or an infinity, by stored float type.
_EXPONENT = {"F32": (np.uint32, 0x7F800000), "F16": (np.uint16, 0x7C00),
             "BF16": (np.uint16, 0x7F80)}
#: Block types: bytes per block and the number of float16 fields (scales) at its start.
_BLOCK_SCALES = {"Q8_0": 1, "Q4_0": 1, "Q4_1": 2}


def has_nonfinite(dtype: str, raw: U8) -> bool:
    """Whether stored bytes ``raw`` (``uint8``) of a tensor of ``dtype`` hold a NaN or an infinity
    (a bit test on the exponent: no arithmetic). Types without floats are never non-finite."""
    if dtype in _EXPONENT:
        word, mask = _EXPONENT[dtype]
        values = raw.view(word)
    elif dtype in _BLOCK_SCALES and dtype in BLOCK_BYTES:
        word, mask = np.uint16, 0x7C00
        values = raw.view(word).reshape(-1, BLOCK_BYTES[dtype] // 2)[:, : _BLOCK_SCALES[dtype]]
    else:
        return False
    pattern = word(mask)
    for i in range(0, len(values), _CHECK_CHUNK):
        if np.any((values[i : i + _CHECK_CHUNK] & pattern) == pattern):
            return True
    return False


def row_nbytes(info: TensorInfo) -> int:
    """File bytes of one row (the last axis) of a tensor."""
    if info.dtype in BLOCK_BYTES or info.dtype in FLOAT_BYTES:
        return file_nbytes(info.dtype, (info.shape[-1],))
    return info.nbytes // max(info.shape[0], 1)
