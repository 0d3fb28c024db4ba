"""GGUF files: a header-only parse, the Llama family (``llama``, ``qwen2``, ``qwen3``, ``phi3``),
tokenizer and chat template metadata. Tensor names come from :mod:`edgert_core.models.arch`.

The header (metadata and tensor directory) is parsed from a read-only memory map of the file's first
bytes, which is closed afterwards; tensor data is never mapped. The ``gguf`` package's own
``GGUFReader`` is not used for the header: it builds about 160 MB of Python objects and takes seconds
for the 49k-token vocabulary of a small model, which would count against the memory budget of the
whole run. Arrays of strings (the vocabulary and its merges) stay the file's bytes
(:class:`StringArray`, about 1.6 MB for SmolLM2 instead of ~9 MB of Python strings) until the
tokenizer is built from them, and are dropped then (:meth:`GGUFModel.tokenizer`).

Type codes and block sizes: the types edge-rt loads are in :data:`GGML_TYPE_CODES` (checked against
the ``gguf`` package by the tests); any other code is looked up in the ``gguf`` package, imported only
then (it costs about 3.6 MiB of RSS, for a table of names).

The header is checked the way llama.cpp's ``gguf_init_from_file`` checks it (the reference for GGUF
conventions): versions 2 and 3, no duplicate keys or tensor names, no nested arrays, a
``general.alignment`` that is a power of two, at most 4 dimensions and a known type per tensor, rows of
whole blocks, and tensor data laid out in directory order, each tensor at the aligned end of the one
before (so misaligned, overlapping or gapped data is refused, naming the tensor). The ``<arch>.*`` keys
the model needs are checked for type and range (see ``docs/model-files.md``). Llama 3's RoPE scaling
is llama.cpp's ``rope_freqs`` tensor, read into the config.
"""

from __future__ import annotations

import importlib
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any, overload

import numpy as np

from edgert_core.backends.numpy_ref import BLOCK_BYTES, FLOAT_BYTES, QK
from edgert_core.errors import ModelError
from edgert_core.layout import ModelDims, TensorInfo
from edgert_core.loaders.base import ModelSource, TensorEntry
from edgert_core.loaders.fields import Fields, check_divisible, show
from edgert_core.loaders.files import open_regular, read_prefix
from edgert_core.memory.malloc import give_back_freed_memory
from edgert_core.models.arch import Arch, by_gguf_arch, supported_line
from edgert_core.models.config import DIM_LIMITS, ModelConfig

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> struct format (scalars) or numpy dtype (arrays)
_SCALAR: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                           10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
#: ggml's limits: dimensions per tensor, bytes of a tensor name (with its terminating NUL).
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64
_INT64_MAX = (1 << 63) - 1

#: ggml's type codes (``enum ggml_type``) of the tensor types edge-rt loads.
GGML_TYPE_CODES: dict[str, int] = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 8, "BF16": 30}
#: code -> (name, values per block, bytes per block), from the numpy backend's block sizes.
_LOADABLE_TYPES: dict[int, tuple[str, int, int]] = {
    code: (name, 1, FLOAT_BYTES[name]) if name in FLOAT_BYTES else (name, QK, BLOCK_BYTES[name])
    for name, code in GGML_TYPE_CODES.items()
}

#: The tensor llama.cpp's converter writes for Llama 3's RoPE scaling: float32 ``[head_dim/2]``,
#: each rotary frequency divided by its factor. Read into the config, not loaded as a weight.
ROPE_FREQS = "rope_freqs.weight"


@dataclass
class GGUFHeader:
    """The parsed header: metadata key/values (scalars, strings, lists of numbers, a
    :class:`StringArray` for an array of strings) and the tensor directory (file names, ``ne`` dims
    in GGUF order, i.e. innermost first, type code, absolute data offset)."""

    version: int
    metadata: dict[str, Any]
    tensors: list[tuple[str, tuple[int, ...], int, int]] = field(default_factory=list)
    data_start: int = 0


class StringArray(Sequence[str]):
    """A GGUF array of ``count`` strings kept as its bytes in the file (each string an 8-byte
    little-endian length and UTF-8 text), decoded when read. The 49k-token vocabulary of a small
    model as Python strings takes about 5 MB (its merges as much again), which stays in the RSS
    of the process after the strings are freed (Python's allocator keeps partly used arenas); as
    bytes it is one allocation, given back when dropped."""

    __slots__ = ("_count", "_offsets", "_raw")

    def __init__(self, raw: bytes, count: int) -> None:
        self._raw = raw
        self._count = count
        self._offsets: np.ndarray[Any, np.dtype[np.int64]] | None = None  # built on random access

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        raw, pos = self._raw, 0
        for _ in range(self._count):
            (n,) = struct.unpack_from("<Q", raw, pos)
            yield raw[pos + 8 : pos + 8 + n].decode("utf-8", errors="replace")
            pos += 8 + n

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError("StringArray index out of range")
        if self._offsets is None:
            offsets = np.empty(self._count, dtype=np.int64)
            pos = 0
            for i in range(self._count):
                offsets[i] = pos
                pos += 8 + struct.unpack_from("<Q", self._raw, pos)[0]
            self._offsets = offsets
        pos = int(self._offsets[index])
        (n,) = struct.unpack_from("<Q", self._raw, pos)
        return self._raw[pos + 8 : pos + 8 + n].decode("utf-8", errors="replace")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray):
            return self._count == other._count and self._raw == other._raw
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == self._count and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # (equal to lists, like a list)

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in islice(self, 3))
        more = ", ..." if self._count > 3 else ""
        return f"StringArray([{head}{more}], {self._count} string{'s' * (self._count != 1)})"

    @property
    def nbytes(self) -> int:
        """Bytes held (the strings as stored in the file)."""
        return len(self._raw)


class _Cursor:
    """Little-endian reads from a buffer; running past its end means the file is truncated."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise ModelError(
                f"{self.path} is truncated inside its GGUF header; download the file again."
            )

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self._need(size)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        self._need(n)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def corrupt(self, what: str) -> ModelError:
        return ModelError(f"{self.path} has a corrupt GGUF header ({what}); the file is damaged.")

    def value(self, vtype: int, key: str) -> Any:
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.scalar("<I")
            count = self.scalar("<Q")
            left = len(self.buf) - self.pos
            if etype == _ARRAY:
                raise self.corrupt(f"key {show(key)} is an array of arrays, which GGUF does not allow")
            if etype in _SCALAR:
                dt = np.dtype(_SCALAR[etype])
                self._need(count * dt.itemsize)
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
                self.pos += count * dt.itemsize
                return arr.tolist()
            if etype == _STRING:
                self._need(min(count, left + 1) * 8)  # every string has an 8-byte length
                start = self.pos
                for _ in range(count):
                    n = self.scalar("<Q")
                    self._need(n)
                    self.pos += n
                return StringArray(bytes(self.buf[start : self.pos]), count)
            raise self.corrupt(f"key {show(key)} is an array of unknown value type {etype}")
        raise self.corrupt(f"key {show(key)} has unknown value type {vtype}")


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a regular file starting with the GGUF magic."""
    try:
        return read_prefix(path, 4) == MAGIC
    except ModelError:
        return False


def read_header(path: Path) -> GGUFHeader:
    """Parse and check the header of a GGUF file without touching its tensor data."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size < 24:
            raise ModelError(
                f"{path} is too short to be a GGUF model ({size} bytes); download it again."
            )
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    with mm:
        return _parse_header(mm, path, size)


def _parse_header(mm: mmap.mmap, path: Path, size: int) -> GGUFHeader:
    if mm[:4] != MAGIC:
        raise ModelError(f"{path} is not a GGUF file (it does not start with 'GGUF').")
    cur = _Cursor(mm, path)
    cur.pos = 4
    version = cur.scalar("<I")
    if version not in (2, 3):
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        hint = " (a big-endian file)" if swapped in (2, 3) else ""
        raise ModelError(
            f"{path} is GGUF version {version}{hint}; edge-rt reads versions 2 and 3 "
            "(little-endian)."
        )
    n_tensors = cur.scalar("<Q")
    n_kv = cur.scalar("<Q")
    # every key takes at least 12 bytes, every tensor entry at least 24
    if n_kv * 12 + n_tensors * 24 > size:
        raise ModelError(
            f"{path} is truncated or corrupt: its GGUF header lists {n_tensors} tensors and {n_kv} "
            f"keys, more than its {size} bytes can hold; download it again."
        )
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        if not key.isprintable():
            raise cur.corrupt(f"key {show(key)} is not printable text")
        if key in metadata:
            raise cur.corrupt(f"key {show(key)} appears twice")
        metadata[key] = cur.value(cur.scalar("<I"), key)
    raw_tensors = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = cur.string()
        if not name.isprintable():
            raise cur.corrupt(f"tensor name {show(name)} is not printable text")
        if len(name.encode("utf-8")) >= GGML_MAX_NAME:
            raise cur.corrupt(f"tensor name {show(name)} is longer than {GGML_MAX_NAME - 1} bytes")
        if name in names:
            raise cur.corrupt(f"tensor {name} appears twice")
        names.add(name)
        n_dims = cur.scalar("<I")
        if n_dims > GGML_MAX_DIMS:
            raise cur.corrupt(f"tensor {name} has {n_dims} dimensions, more than {GGML_MAX_DIMS}")
        ne = tuple(cur.scalar("<Q") for _ in range(n_dims))
        ttype = cur.scalar("<I")
        offset = cur.scalar("<Q")
        _check_tensor(cur, name, ne, ttype)
        raw_tensors.append((name, ne, ttype, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        isinstance(alignment, bool)
        or not isinstance(alignment, int)
        or alignment <= 0
        or alignment & (alignment - 1)
    ):
        raise cur.corrupt(f"general.alignment is {show(alignment)}, not a power of two")
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    _check_offsets(path, raw_tensors, alignment, data_start, size)
    header = GGUFHeader(version, metadata, data_start=data_start)
    header.tensors = [(n, ne, t, data_start + off) for n, ne, t, off in raw_tensors]
    return header


def _check_tensor(cur: _Cursor, name: str, ne: tuple[int, ...], code: int) -> None:
    """A tensor entry's dims and type as llama.cpp checks them."""
    known = ggml_type(code)
    if known is None:
        raise cur.corrupt(f"tensor {name} has unknown type code {code}")
    type_label, block, _ = known
    n = 1
    for x in ne:
        n *= x
        if x > _INT64_MAX or n > _INT64_MAX:
            raise cur.corrupt(f"tensor {name} has impossible dimensions {list(ne)}")
    if ne and ne[0] % block:
        raise cur.corrupt(
            f"tensor {name} of type {type_label} has rows of {ne[0]} values, not whole blocks of "
            f"{block}"
        )


def _check_offsets(
    path: Path, tensors: list[tuple[str, tuple[int, ...], int, int]], alignment: int,
    data_start: int, size: int,
) -> None:
    """Tensor data in directory order, each tensor at the aligned end of the previous one (as
    llama.cpp requires), and inside the file."""
    expected = 0
    spans: list[tuple[str, int, int]] = []
    for name, ne, code, offset in tensors:
        nbytes = tensor_nbytes(code, ne)
        if offset % alignment:
            raise ModelError(
                f"{path}: tensor {name} starts at data offset {offset}, which is not a multiple of "
                f"general.alignment ({alignment}); the GGUF file is corrupt."
            )
        if offset < expected:
            other = next((n for n, a, b in spans if a <= offset < max(b, a + 1)), spans[-1][0])
            raise ModelError(
                f"{path}: the data of tensor {name} (from data offset {offset}) overlaps tensor "
                f"{other}; the GGUF file is corrupt."
            )
        if offset > expected:
            before = f"tensor {spans[-1][0]}" if spans else "the start of the data section"
            raise ModelError(
                f"{path}: tensor {name} starts at data offset {offset} but {before} ends at "
                f"{expected} (aligned); GGUF tensor data must follow in directory order without "
                "gaps, so the file is corrupt."
            )
        end = data_start + offset + nbytes
        if end > size:
            raise ModelError(
                f"{path} is truncated: tensor {name} ends at byte {end} but the file has {size} "
                "bytes; download it again."
            )
        spans.append((name, offset, offset + nbytes))
        expected = offset + (nbytes + alignment - 1) // alignment * alignment


#: Metadata arrays only the tokenizer reads; dropped once it is built.
_TOKENIZER_ARRAYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
)


@cache
def ggml_type(code: int) -> tuple[str, int, int] | None:
    """GGML type code -> ``(name, values per block, bytes per block)``, ``None`` for a code unknown
    to ggml. The types edge-rt loads come from :data:`GGML_TYPE_CODES`; any other code from the
    ``gguf`` package, imported here only (a file with such a tensor is refused anyway, naming it)."""
    if code in _LOADABLE_TYPES:
        return _LOADABLE_TYPES[code]
    gguf: Any = importlib.import_module("gguf")
    try:
        qtype = gguf.GGMLQuantizationType(code)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        return None
    return str(qtype.name), int(block), int(type_size)


def type_name(code: int) -> str:
    """GGML type code -> its name (``Q4_1``), or ``type N`` for codes the gguf package lacks."""
    known = ggml_type(code)
    return f"type {code}" if known is None else known[0]


def tensor_nbytes(code: int, ne: tuple[int, ...]) -> int:
    """File bytes of a tensor of GGML type ``code`` and dims ``ne`` (rows of whole blocks)."""
    n = 1
    for x in ne:
        n *= int(x)
    known = ggml_type(code)
    if known is None:
        return 0
    _, block, type_size = known
    return n // block * type_size


class GGUFModel(ModelSource):
    """A GGUF file in the ``loaded`` state."""

    format = "gguf"

    def __init__(self, path: Path) -> None:
        header = read_header(path)
        self.header = header
        self._tokenizer: Any = None
        md = header.metadata
        arch_name = md.get("general.architecture")
        archs = by_gguf_arch()
        if not isinstance(arch_name, str) or arch_name not in archs:
            raise ModelError(
                f"{path} holds a model of architecture {show(arch_name)}, which edge-rt does not "
                f"support; supported: {supported_line()}."
            )
        self.arch = arch = archs[arch_name]
        config = _llama_config(path, md, header, arch)
        entries: dict[str, TensorEntry] = {}
        self.unknown: list[str] = []
        for name, ne, code, offset in header.tensors:
            if name == ROPE_FREQS and config.rope_freq_factors is not None:
                continue  # read into the config
            canon = arch.canonical_from_gguf(name)
            if canon is None:
                self.unknown.append(name)
                canon = name
            shape = tuple(int(x) for x in reversed(ne))  # GGUF lists the innermost dim first
            info = TensorInfo(canon, shape, type_name(code), tensor_nbytes(code, ne))
            entries[canon] = TensorEntry(info, path, offset, name)
        label = path.stem
        super().__init__(path, label, config, entries)
        template = md.get("tokenizer.chat_template")
        self.chat_template = template if isinstance(template, str) else None

    def _file_name_hint(self, name: str) -> str:
        return self.arch.gguf_from_canonical(name) or name

    def tokenizer(self) -> Any:
        """The tokenizer, built once. The vocabulary arrays it came from are then dropped from the
        metadata, and the heap pages its build temporaries freed (a vocabulary dict and merge pairs
        of ~100k Python strings, their copies in the ``tokenizers`` library: ~5 MiB for SmolLM2)
        are given back to the OS."""
        from edgert_core.tokenizer import tokenizer_from_gguf_metadata

        if self._tokenizer is None:
            self._tokenizer = tokenizer_from_gguf_metadata(self.header.metadata, self.path)
            self._drop_vocabulary()
            give_back_freed_memory()
        return self._tokenizer

    def _drop_vocabulary(self) -> None:
        """Forget the metadata arrays only the tokenizer reads (they are not read again)."""
        for key in _TOKENIZER_ARRAYS:
            self.header.metadata.pop(key, None)


def _llama_config(path: Path, md: dict[str, Any], header: GGUFHeader, arch: Arch) -> ModelConfig:
    """The hyperparameters of a model of the Llama family from its ``<arch>.*`` keys (``llama.``,
    ``qwen2.`` ...), each checked for type and range."""
    f = Fields(md, path, f"{arch.gguf_arch}.")
    lim = DIM_LIMITS
    n_heads = f.whole("attention.head_count", maximum=lim["n_heads"])
    hidden = f.whole("embedding_length", maximum=lim["hidden"])
    n_kv = f.whole("attention.head_count_kv", default=n_heads, maximum=lim["n_heads"])
    check_divisible(f, "attention.head_count", n_heads, "attention.head_count_kv", n_kv)
    if f.has("attention.key_length"):
        head_dim = f.whole("attention.key_length", maximum=lim["head_dim"])
    else:
        check_divisible(f, "embedding_length", hidden, "attention.head_count", n_heads)
        head_dim = hidden // n_heads
    if head_dim % 2 or head_dim > lim["head_dim"]:
        raise f.error("attention.key_length", f"(head size {head_dim}) must be even and at most "
                      f"{lim['head_dim']} for rotary position embeddings")
    value_dim = f.whole("attention.value_length", default=head_dim, maximum=lim["head_dim"])
    if value_dim != head_dim:
        raise f.error("attention.value_length", f"({value_dim}) differs from the key length "
                      f"({head_dim}), which edge-rt does not support")
    rope_dim = f.whole("rope.dimension_count", default=head_dim, maximum=lim["head_dim"])
    if rope_dim != head_dim:
        raise ModelError(
            f"{path} rotates {rope_dim} of {head_dim} head dimensions (partial RoPE), which edge-rt "
            "does not support."
        )
    scaling = f.text("rope.scaling.type")
    if scaling not in (None, "none"):
        raise ModelError(f"{path} uses RoPE scaling {scaling!r}, which edge-rt does not support.")
    names = {t[0] for t in header.tensors}
    freq_factors = _rope_freqs(path, header, head_dim) if ROPE_FREQS in names else None
    tokens = md.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens) if isinstance(tokens, (list, StringArray)) else 0
    if f.has("vocab_size"):
        vocab = f.whole("vocab_size", maximum=lim["vocab"])
    elif n_tokens:
        vocab = n_tokens
    else:
        embd = next((ne for n, ne, _, _ in header.tensors if n == "token_embd.weight"), ())
        if len(embd) != 2:
            raise ModelError(
                f"{path} has neither {f.prefix}vocab_size, a tokenizer vocabulary nor a 2-D "
                "token_embd.weight; the file is incomplete."
            )
        vocab = int(embd[1])
    if not 1 <= vocab <= lim["vocab"]:
        raise f.error("vocab_size", f"(the vocabulary size) must be between 1 and {lim['vocab']}, "
                      f"got {vocab}")
    if n_tokens > vocab:
        raise ModelError(
            f"{path} has {n_tokens} tokens in tokenizer.ggml.tokens but a vocabulary of {vocab}; "
            "the file is inconsistent."
        )
    max_position = f.whole("context_length", default=2048, maximum=lim["max_position"])
    if f.has("attention.sliding_window"):  # Phi-3: attention is exact up to the window
        max_position = min(max_position, f.whole("attention.sliding_window",
                                                  maximum=lim["max_position"]))
    dims = ModelDims(
        architecture=arch.name,
        n_layers=f.whole("block_count", maximum=lim["n_layers"]),
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        intermediate=f.whole("feed_forward_length", maximum=lim["intermediate"]),
        vocab=vocab,
        max_position=max_position,
    )
    tok = Fields(md, path, "tokenizer.ggml.")
    eos_ids = tuple(dict.fromkeys(
        (*tok.token_ids("eos_token_id", vocab), *tok.token_ids("eot_token_id", vocab))
    ))
    bos = tok.token_ids("bos_token_id", vocab)
    if len(bos) > 1:
        raise tok.error("bos_token_id", "must be one token id")
    tok.flag("add_bos_token", False)
    return ModelConfig(
        dims=dims,
        norm_eps=f.number("attention.layer_norm_rms_epsilon", 1e-5, maximum=1.0),
        rope_theta=f.number("rope.freq_base", 10000.0),
        rope_interleaved=arch.gguf_qk_permuted,
        rope_freq_factors=freq_factors,
        tied_embeddings="output.weight" not in names,
        bos_token_id=bos[0] if bos else None,
        eos_token_ids=eos_ids,
    )


def _rope_freqs(path: Path, header: GGUFHeader, head_dim: int) -> tuple[float, ...]:
    """The factors of llama.cpp's ``rope_freqs`` tensor (Llama 3 RoPE scaling): float32
    ``[head_dim/2]``, positive and finite."""
    _, ne, code, offset = next(t for t in header.tensors if t[0] == ROPE_FREQS)
    if type_name(code) != "F32" or tuple(ne) != (head_dim // 2,):
        raise ModelError(
            f"{path}: tensor {ROPE_FREQS} is {type_name(code)} {list(ne)} but RoPE frequency "
            f"factors are F32 [{head_dim // 2}]; the file is corrupt."
        )
    fd = open_regular(path)
    try:
        raw = os.pread(fd, 4 * (head_dim // 2), offset)
    finally:
        os.close(fd)
    values = np.frombuffer(raw, dtype="<f4")
    if len(values) != head_dim // 2 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ModelError(
            f"{path}: tensor {ROPE_FREQS} holds factors that are not positive finite numbers; "
            "the file is corrupt."
        )
    return tuple(float(v) for v in values)
