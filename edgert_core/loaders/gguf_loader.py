"""GGUF files: a header-only parse, the ``llama`` architecture, tokenizer and chat template metadata.

The header (metadata and tensor directory) is parsed from a read-only memory map of the file's first
bytes, which is closed afterwards; tensor data is never mapped. Type codes and block sizes come from
the ``gguf`` package. The ``gguf`` package's own ``GGUFReader`` is not used for the header: it builds
about 160 MB of Python objects and takes seconds for the 49k-token vocabulary of a small model, which
would count against the memory budget of the whole run.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edgert_core.errors import ModelError
from edgert_core.layout import ModelDims, TensorInfo
from edgert_core.loaders.base import ModelSource, TensorEntry
from edgert_core.models.config import ModelConfig

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF metadata value types -> struct format (scalars) or numpy dtype (arrays)
_SCALAR: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                           10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

#: GGUF llama tensor names -> canonical (Hugging Face) names; ``{i}`` is the block index.
_LLAMA_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LLAMA_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


@dataclass
class GGUFHeader:
    """The parsed header: metadata key/values and the tensor directory (file names, ``ne`` dims in
    GGUF order, i.e. innermost first, type code, absolute data offset)."""

    version: int
    metadata: dict[str, Any]
    tensors: list[tuple[str, tuple[int, ...], int, int]] = field(default_factory=list)
    data_start: int = 0


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
        if n > 1 << 30:
            raise ModelError(f"{self.path} has a corrupt GGUF header (a string of {n} bytes).")
        self._need(n)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.scalar("<I")
            count = self.scalar("<Q")
            if count > 1 << 31:
                raise ModelError(f"{self.path} has a corrupt GGUF header (an array of {count}).")
            if etype in _SCALAR and etype != 7:
                dt = np.dtype(_SCALAR[etype])
                self._need(count * dt.itemsize)
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
                self.pos += count * dt.itemsize
                return arr.tolist()
            return [self.value(etype) for _ in range(count)]
        raise ModelError(f"{self.path} has a corrupt GGUF header (value type {vtype}).")


def is_gguf(path: Path) -> bool:
    """Whether ``path`` starts with the GGUF magic."""
    try:
        with path.open("rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_header(path: Path) -> GGUFHeader:
    """Parse the header of a GGUF file without touching its tensor data."""
    size = path.stat().st_size
    if size < 24:
        raise ModelError(f"{path} is too short to be a GGUF model ({size} bytes); download it again.")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != MAGIC:
            raise ModelError(f"{path} is not a GGUF file (it does not start with 'GGUF').")
        cur = _Cursor(mm, path)
        cur.pos = 4
        version = cur.scalar("<I")
        if version not in (2, 3):
            raise ModelError(
                f"{path} is GGUF version {version}; edge-rt reads versions 2 and 3 (little-endian)."
            )
        n_tensors = cur.scalar("<Q")
        n_kv = cur.scalar("<Q")
        if n_tensors > 1 << 24 or n_kv > 1 << 24:
            raise ModelError(f"{path} has a corrupt GGUF header ({n_tensors} tensors, {n_kv} keys).")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.scalar("<I"))
        raw_tensors = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar("<I")
            if n_dims > 8:
                raise ModelError(f"{path} has a corrupt GGUF header (tensor {name} has {n_dims} dims).")
            ne = tuple(cur.scalar("<Q") for _ in range(n_dims))
            ttype = cur.scalar("<I")
            offset = cur.scalar("<Q")
            raw_tensors.append((name, ne, ttype, offset))
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        if alignment <= 0:
            raise ModelError(f"{path} has a corrupt GGUF header (alignment {alignment}).")
        data_start = (cur.pos + alignment - 1) // alignment * alignment
    header = GGUFHeader(version, metadata, data_start=data_start)
    header.tensors = [(n, ne, t, data_start + off) for n, ne, t, off in raw_tensors]
    return header


#: Metadata arrays only the tokenizer reads; dropped once it is built.
_TOKENIZER_ARRAYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
)


def type_name(code: int) -> str:
    """GGML type code -> its name (``Q4_1``), or ``type N`` for codes this gguf package lacks."""
    try:
        return gguf.GGMLQuantizationType(code).name
    except ValueError:
        return f"type {code}"


def tensor_nbytes(code: int, ne: tuple[int, ...]) -> int:
    """File bytes of a tensor of GGML type ``code`` and dims ``ne``."""
    n = int(np.prod(ne, dtype=np.int64)) if ne else 1
    try:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(code)]
    except (ValueError, KeyError):
        return 0
    return n // block * type_size


def canonical_llama_name(name: str) -> str | None:
    """GGUF llama tensor name -> canonical name (``None`` if it is not a llama tensor)."""
    if name in _LLAMA_NAMES:
        return _LLAMA_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LLAMA_BLOCK:
        return f"model.layers.{parts[1]}.{_LLAMA_BLOCK[parts[2]]}"
    return None


class GGUFModel(ModelSource):
    """A GGUF file in the ``loaded`` state."""

    format = "gguf"

    def __init__(self, path: Path) -> None:
        header = read_header(path)
        self.header = header
        self._tokenizer: Any = None
        md = header.metadata
        arch = md.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelError(
                f"{path} holds a model of architecture {arch!r}, which edge-rt does not support; "
                f"supported GGUF architectures: {', '.join(SUPPORTED_ARCHITECTURES)}."
            )
        config = _llama_config(path, md, header)
        entries: dict[str, TensorEntry] = {}
        self.unknown: list[str] = []
        for name, ne, code, offset in header.tensors:
            canon = canonical_llama_name(name)
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
        reverse = {v: k for k, v in _LLAMA_NAMES.items()}
        if name in reverse:
            return reverse[name]
        for short, canon in _LLAMA_BLOCK.items():
            if name.endswith("." + canon):
                index = name.split(".")[2]
                return f"blk.{index}.{short}"
        return name

    def tokenizer(self) -> Any:
        """The tokenizer, built once; the vocabulary arrays it came from are then dropped from the
        metadata (about 100k Python strings, ~8 MB of RSS for SmolLM2)."""
        from edgert_core.tokenizer import tokenizer_from_gguf_metadata

        if self._tokenizer is None:
            self._tokenizer = tokenizer_from_gguf_metadata(self.header.metadata, self.path)
            for key in _TOKENIZER_ARRAYS:
                self.header.metadata.pop(key, None)
        return self._tokenizer


def _llama_config(path: Path, md: dict[str, Any], header: GGUFHeader) -> ModelConfig:
    def get(key: str, default: Any = None) -> Any:
        value = md.get(f"llama.{key}", default)
        if value is None:
            raise ModelError(f"{path} lacks metadata key llama.{key}; the file is incomplete.")
        return value

    n_heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    n_kv = int(get("attention.head_count_kv", n_heads))
    head_dim = int(md.get("llama.attention.key_length", hidden // max(n_heads, 1)))
    rope_dim = int(md.get("llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ModelError(
            f"{path} rotates {rope_dim} of {head_dim} head dimensions (partial RoPE), which edge-rt "
            "does not support."
        )
    scaling = md.get("llama.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ModelError(f"{path} uses RoPE scaling {scaling!r}, which edge-rt does not support.")
    names = {t[0] for t in header.tensors}
    if "rope_freqs.weight" in names:
        raise ModelError(
            f"{path} has tensor rope_freqs.weight (Llama 3.1 RoPE scaling), which edge-rt does "
            "not support."
        )
    tokens = md.get("tokenizer.ggml.tokens")
    vocab = int(md.get("llama.vocab_size", len(tokens) if isinstance(tokens, list) else 0))
    if vocab == 0:
        vocab = next((int(ne[1]) for n, ne, _, _ in header.tensors if n == "token_embd.weight"), 0)
    dims = ModelDims(
        architecture="llama",
        n_layers=int(get("block_count")),
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        intermediate=int(get("feed_forward_length")),
        vocab=vocab,
        max_position=int(get("context_length", 2048)),
    )
    eos = md.get("tokenizer.ggml.eos_token_id")
    eot = md.get("tokenizer.ggml.eot_token_id")
    eos_ids = tuple(dict.fromkeys(int(x) for x in (eos, eot) if x is not None))
    bos = md.get("tokenizer.ggml.bos_token_id")
    return ModelConfig(
        dims=dims,
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(md.get("llama.rope.freq_base", 10000.0)),
        rope_interleaved=True,
        tied_embeddings="output.weight" not in names,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=eos_ids,
    )
