"""Hugging Face model folders: ``config.json`` + ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) + optional ``tokenizer.json``; the architectures of
:mod:`edgert_core.models.arch` (Llama incl. Llama 3 RoPE scaling, Qwen2, Qwen3, Phi-3, GPT-2).

Safetensors headers are parsed here (an 8-byte length and a JSON table of names, dtypes, shapes and
byte ranges); tensor data is read later, per tensor. GPT-2 stores its Conv1D weights ``[in, out]``;
they are described with the logical ``[out, in]`` shape and transposed when read.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from edgert_core.errors import ModelError
from edgert_core.layout import ModelDims, TensorInfo
from edgert_core.loaders.base import ModelSource, TensorEntry
from edgert_core.loaders.fields import Fields, check_divisible, show
from edgert_core.loaders.files import (
    PICKLE_SUFFIXES,
    check_regular,
    open_regular,
    pickle_refusal,
    read_small,
)
from edgert_core.models.arch import Arch, arch_of, by_hf_model_type, supported_line
from edgert_core.models.config import DIM_LIMITS, ModelConfig
from edgert_core.models.rope import Llama3Scaling

_DTYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16"}
#: Every dtype of the safetensors format and its bits per value; other names are refused.
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
}
#: The safetensors format's limit on the JSON header.
MAX_HEADER_BYTES = 100_000_000
#: Longest tensor name accepted (names appear in messages).
MAX_NAME_CHARS = 256
#: Buffers some checkpoints carry that are not weights.
_IGNORABLE_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and os.path.lexists(path / "config.json")


def _parse_json(raw: bytes, path: Path, what: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ModelError(f"{path} has key {show(key)} twice in its {what}; it is corrupt.")
            out[key] = value
        return out

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
        raise ModelError(f"{path}: its {what} is {reason}; the file is corrupt.") from None


def _load_json(path: Path) -> Any:
    return _parse_json(read_small(path, what="Model file"), path, "text")


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The checked JSON table of a safetensors file and the absolute offset where its data starts.

    As the safetensors format requires: a header of at most 100 MB holding a JSON object, a known
    dtype, a shape of non-negative integers and ``data_offsets`` matching the shape for every
    tensor, and byte ranges that cover the data section exactly (no overlap, no gap, nothing past
    the end or after the last tensor)."""
    fd = open_regular(path, "Safetensors file")
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 8, 0)
        if len(head) < 8:
            raise ModelError(f"{path} is too short to be a safetensors file; download it again.")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise ModelError(
                f"{path} is not a safetensors file or is truncated (header of {n} bytes in a "
                f"file of {size}); download it again."
            )
        raw = os.pread(fd, n, 8)
    except OSError as exc:
        raise ModelError(f"Cannot read {path}: {exc.strerror}.") from None
    finally:
        os.close(fd)
    if len(raw) < n or not raw.startswith(b"{"):
        raise ModelError(f"{path} is not a safetensors file (its header is not a JSON object).")
    table = _parse_json(raw, path, "safetensors header")
    if not isinstance(table, dict):
        raise ModelError(f"{path} is not a safetensors file (its header is not a JSON object).")
    _check_safetensors_table(path, table, size - 8 - n)
    return table, 8 + n


def _check_safetensors_table(path: Path, table: dict[str, Any], data_size: int) -> None:
    meta = table.get("__metadata__")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise ModelError(f"{path}: __metadata__ must map strings to strings; the file is corrupt.")
    spans: list[tuple[int, int, str]] = []
    for name, spec in table.items():
        if name == "__metadata__":
            continue
        begin, end = _check_spec(path, name, spec)
        spans.append((begin, end, name))
    spans.sort()
    pos, prev = 0, ""
    for begin, end, name in spans:
        if begin < pos:
            raise ModelError(
                f"{path}: the byte range of tensor {name} ({begin}..{end}) overlaps tensor {prev}; "
                "the safetensors file is corrupt."
            )
        if begin > pos:
            before = f"tensor {prev} (ends at {pos})" if prev else "the start of the data"
            raise ModelError(
                f"{path}: bytes {pos}..{begin} between {before} and tensor {name} belong to no "
                "tensor, which the safetensors format forbids; the file is corrupt."
            )
        pos, prev = end, name
    if pos > data_size:
        raise ModelError(
            f"{path} is truncated: tensor {prev} ends at data byte {pos} but the file holds "
            f"{data_size} bytes of data; download it again."
        )
    if pos < data_size:
        raise ModelError(
            f"{path} has {data_size - pos} bytes after its last tensor, which the safetensors "
            "format forbids; the file is corrupt."
        )


def _check_spec(path: Path, name: str, spec: Any) -> tuple[int, int]:
    """One header entry: its ``data_offsets`` once dtype, shape and offsets agree."""
    if not name.isprintable() or len(name) > MAX_NAME_CHARS:
        raise ModelError(
            f"{path} has a tensor named {show(name)}, not a printable name of at most "
            f"{MAX_NAME_CHARS} characters; the file is corrupt."
        )
    if not isinstance(spec, dict):
        raise ModelError(f"{path} has a corrupt header entry for tensor {name} (not an object).")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:
        raise ModelError(
            f"{path}: tensor {name} has unknown dtype {show(dtype)}; the file is corrupt."
        )

    def is_count(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    if not isinstance(shape, list) or len(shape) > 8 or not all(is_count(x) for x in shape):
        raise ModelError(
            f"{path}: tensor {name} has shape {show(shape)}, not a list of at most 8 "
            "non-negative integers; the file is corrupt."
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(is_count(x) for x in offsets)
        or offsets[0] > offsets[1]
    ):
        raise ModelError(
            f"{path}: tensor {name} has data_offsets {show(offsets)}, not [begin, end] with "
            "0 <= begin <= end; the file is corrupt."
        )
    count = 1
    for x in shape:
        count *= x
    nbytes = count * SAFETENSORS_DTYPE_BITS[dtype] // 8
    begin, end = offsets
    if end - begin != nbytes:
        raise ModelError(
            f"{path}: tensor {name} of dtype {dtype} and shape {shape} takes {nbytes} bytes but "
            f"its data_offsets span {end - begin}; the file is corrupt."
        )
    return begin, end


def _check_at_most(fields: Fields, name: str, value: int, limit: int) -> None:
    if value > limit:
        raise fields.error(name, f"({value}) must be at most {limit}")


#: ``config.json`` switches of each Llama-family architecture that add tensors or change the math
#: edge-rt runs; a model that sets one to anything but the value given is refused.
_FIXED: dict[str, dict[str, Any]] = {
    "llama": {"attention_bias": False, "mlp_bias": False},
    "qwen2": {"use_sliding_window": False},
    "qwen3": {"attention_bias": False, "use_sliding_window": False},
    "phi3": {"attention_bias": False},
}


def _rope(f: Fields, path: Path) -> tuple[float, Llama3Scaling | None]:
    """RoPE's base and Llama 3 scaling, from ``rope_scaling`` (transformers 4) and
    ``rope_parameters`` (transformers 5) or the top level, each checked wherever it is given."""
    cfg = f.values
    scaling = cfg.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise f.error("rope_scaling", f"must be an object or null, got {show(scaling)}")
    ropes = [(Fields(d, path, label=f"{key}."), d)
             for key, d in (("rope_scaling", scaling or {}), ("rope_parameters", f.obj("rope_parameters")))]
    llama3: Llama3Scaling | None = None
    for rf, _ in ropes:
        rf.number("rope_theta", 10000.0)  # checked wherever it is given
        rope_type = rf.text("rope_type") or rf.text("type") or "default"
        if rope_type == "llama3":
            llama3 = Llama3Scaling(
                factor=rf.number("factor", 8.0, minimum=1.0),
                low_freq_factor=rf.number("low_freq_factor", 1.0),
                high_freq_factor=rf.number("high_freq_factor", 4.0),
                original_context=rf.whole("original_max_position_embeddings", default=8192,
                                          maximum=DIM_LIMITS["max_position"]),
            )
            if not llama3.high_freq_factor > llama3.low_freq_factor > 0:
                raise rf.error("high_freq_factor", "must be larger than low_freq_factor, which "
                               "must be positive")
        elif rope_type != "default":
            raise ModelError(
                f"{path} uses RoPE scaling {show(rope_type)} ({rf.label}rope_type), which "
                "edge-rt does not support; supported: default, llama3."
            )
        if rf.number("partial_rotary_factor", 1.0) != 1.0:
            raise ModelError(f"{path} rotates part of each head ({rf.label}partial_rotary_factor), "
                             "which edge-rt does not support.")
    if f.number("partial_rotary_factor", 1.0) != 1.0:
        raise ModelError(f"{path} rotates part of each head (partial_rotary_factor), which edge-rt "
                         "does not support.")
    theta_fields = next((rf for rf, d in reversed(ropes) if "rope_theta" in d), f)
    return theta_fields.number("rope_theta", 10000.0), llama3


def _llama_config(cfg: dict[str, Any], path: Path, arch: Arch) -> ModelConfig:
    """A config of the Llama family (``llama``, ``qwen2``, ``qwen3``, ``phi3``)."""
    f = Fields(cfg, path)
    lim = DIM_LIMITS
    theta, llama3 = _rope(f, path)
    for key, value in _FIXED[arch.name].items():
        if f.flag(key, value) != value:
            raise ModelError(
                f"{path} sets {key} to {show(not value)}, which edge-rt's {arch.name} does not "
                "support."
            )
    act = f.text("hidden_act", "silu")
    if act != "silu":
        raise ModelError(f"{path}: hidden_act is {show(act)}; edge-rt's {arch.name} needs silu.")
    n_heads = f.whole("num_attention_heads", maximum=lim["n_heads"])
    hidden = f.whole("hidden_size", maximum=lim["hidden"])
    n_kv = f.whole("num_key_value_heads", default=n_heads, maximum=lim["n_heads"])
    check_divisible(f, "num_attention_heads", n_heads, "num_key_value_heads", n_kv)
    if f.has("head_dim") and f.raw("head_dim")[1] is not None:
        head_dim = f.whole("head_dim", maximum=lim["head_dim"])
    else:
        check_divisible(f, "hidden_size", hidden, "num_attention_heads", n_heads)
        head_dim = hidden // n_heads
        _check_at_most(f, "hidden_size / num_attention_heads", head_dim, lim["head_dim"])
    if head_dim % 2:
        raise f.error("head_dim", f"({head_dim}) must be even for rotary position embeddings")
    vocab = f.whole("vocab_size", maximum=lim["vocab"])
    max_position = f.whole("max_position_embeddings", default=2048, maximum=lim["max_position"])
    if f.has("sliding_window") and f.raw("sliding_window")[1] is not None and arch.name == "phi3":
        # attention is exact up to the window: run no further than it
        max_position = min(max_position, f.whole("sliding_window", maximum=lim["max_position"]))
    dims = ModelDims(
        architecture=arch.name,
        n_layers=f.whole("num_hidden_layers", maximum=lim["n_layers"]),
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        intermediate=f.whole("intermediate_size", maximum=lim["intermediate"]),
        vocab=vocab,
        max_position=max_position,
    )
    return ModelConfig(
        dims=dims,
        norm_eps=f.number("rms_norm_eps", 1e-6, maximum=1.0),
        rope_theta=theta,
        rope_interleaved=False,
        rope_llama3=llama3,
        tied_embeddings=f.flag("tie_word_embeddings", False),
        bos_token_id=_bos(f, vocab),
        eos_token_ids=f.token_ids("eos_token_id", vocab, drop_outside=True),
    )


def _bos(f: Fields, vocab: int) -> int | None:
    bos = f.token_ids("bos_token_id", vocab, drop_outside=True)
    if len(bos) > 1:
        raise f.error("bos_token_id", "must be one token id")
    return bos[0] if bos else None


def _gpt2_config(cfg: dict[str, Any], path: Path) -> ModelConfig:
    f = Fields(cfg, path)
    lim = DIM_LIMITS
    act = f.text("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ModelError(
            f"{path}: activation_function is {show(act)}; edge-rt's GPT-2 supports gelu_new."
        )
    if f.flag("scale_attn_by_inverse_layer_idx", False) or not f.flag("scale_attn_weights", True):
        raise ModelError(
            f"{path} uses a GPT-2 attention scaling variant (scale_attn_weights / "
            "scale_attn_by_inverse_layer_idx) edge-rt does not support."
        )
    hidden = f.whole("n_embd", "hidden_size", maximum=lim["hidden"])
    n_heads = f.whole("n_head", "num_attention_heads", maximum=lim["n_heads"])
    check_divisible(f, f.raw("n_embd", "hidden_size")[0], hidden,
                    f.raw("n_head", "num_attention_heads")[0], n_heads)
    _check_at_most(f, "n_embd / n_head", hidden // n_heads, lim["head_dim"])
    vocab = f.whole("vocab_size", maximum=lim["vocab"])
    dims = ModelDims(
        architecture="gpt2",
        n_layers=f.whole("n_layer", "num_hidden_layers", maximum=lim["n_layers"]),
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        head_dim=hidden // n_heads,
        intermediate=f.whole("n_inner", default=4 * hidden, maximum=lim["intermediate"]),
        vocab=vocab,
        max_position=f.whole("n_positions", "max_position_embeddings",
                             maximum=lim["max_position"]),
    )
    return ModelConfig(
        dims=dims,
        norm_eps=f.number("layer_norm_epsilon", 1e-5, maximum=1.0),
        tied_embeddings=f.flag("tie_word_embeddings", True),
        bos_token_id=_bos(f, vocab),
        eos_token_ids=f.token_ids("eos_token_id", vocab, drop_outside=True),
    )


def canonical_name(architecture: str, name: str) -> str:
    return name.removeprefix(arch_of(architecture).hf_strip)


class HFModel(ModelSource):
    """A Hugging Face model folder in the ``loaded`` state."""

    format = "hf"

    def __init__(self, path: Path) -> None:
        cfg_path = path / "config.json"
        cfg = _load_json(cfg_path)
        if not isinstance(cfg, dict):
            raise ModelError(f"{cfg_path} is not a JSON object; the model folder is corrupt.")
        model_type = cfg.get("model_type")
        known = by_hf_model_type()
        if not isinstance(model_type, str) or model_type not in known:
            archs = cfg.get("architectures")
            arch_name = archs[0] if isinstance(archs, list) and archs else model_type
            raise ModelError(
                f"{path} holds a {show(arch_name)} model (model_type {show(model_type)}), which "
                f"edge-rt does not support; supported: {supported_line()}."
            )
        arch = known[model_type]
        model_type = arch.name
        config = (_gpt2_config(cfg, cfg_path) if arch.name == "gpt2"
                  else _llama_config(cfg, cfg_path, arch))
        entries: dict[str, TensorEntry] = {}
        files = self._weight_files(path)
        for file, expected in files.items():
            table, data_start = read_safetensors_header(file)
            for name, spec in table.items():
                if name == "__metadata__":
                    continue
                if expected is not None and name not in expected:
                    raise ModelError(
                        f"{file} holds tensor {name}, which model.safetensors.index.json does not "
                        "place in that shard; the model folder is inconsistent."
                    )
                entries_name = canonical_name(model_type, name)
                if entries_name in entries:
                    raise ModelError(
                        f"Tensor {name} is stored twice, in {entries[entries_name].file.name} and "
                        f"{file.name}; the model folder is inconsistent."
                    )
                entries[entries_name] = _entry(file, name, entries_name, spec, data_start, model_type)
            if expected is not None and not expected <= table.keys():
                missing = sorted(expected - table.keys())[0]
                raise ModelError(
                    f"model.safetensors.index.json places tensor {missing} in {file.name}, which "
                    "does not hold it; the model folder is inconsistent."
                )
        super().__init__(path, path.name, config, entries)
        tok_cfg = path / "tokenizer_config.json"
        if os.path.lexists(tok_cfg):
            tok_data = _load_json(tok_cfg)
            if not isinstance(tok_data, dict):
                raise ModelError(f"{tok_cfg} is not a JSON object; the model folder is corrupt.")
            template = tok_data.get("chat_template")
            self.chat_template = template if isinstance(template, str) else None
        jinja = path / "chat_template.jinja"
        if self.chat_template is None and os.path.lexists(jinja):
            try:
                self.chat_template = read_small(jinja, what="Chat template").decode("utf-8")
            except UnicodeDecodeError:
                raise ModelError(f"{jinja} is not UTF-8 text; the model folder is corrupt.") from None

    @staticmethod
    def _weight_files(path: Path) -> dict[Path, set[str] | None]:
        """The safetensors files and, for shards, the tensor names the index places in each."""
        single = path / "model.safetensors"
        index = path / "model.safetensors.index.json"
        if os.path.lexists(single):
            return {single: None}
        if os.path.lexists(index):
            data = _load_json(index)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()
            ):
                raise ModelError(
                    f"{index} has no weight_map of tensor names to files; the model folder is "
                    "corrupt."
                )
            shards: dict[Path, set[str] | None] = {}
            for tensor, shard in weight_map.items():
                parts = Path(shard).parts
                if not shard or Path(shard).is_absolute() or ".." in parts or len(parts) != 1:
                    raise ModelError(
                        f"{index} places tensor {tensor} in {show(shard)}, which is not a file "
                        "name inside the model folder; the index is corrupt or hostile."
                    )
                names = shards.setdefault(path / shard, set())
                assert names is not None
                names.add(tensor)
            missing = [f for f in shards if not os.path.lexists(f)]
            if missing:
                raise ModelError(
                    f"{path} is missing shard {missing[0].name} listed in {index.name}; download "
                    "it again."
                )
            return shards
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise pickle_refusal(path / pickles[0])
        raise ModelError(f"{path} has config.json but no model.safetensors; download the weights.")

    def unexpected_ok(self, name: str) -> bool:
        if name.endswith(_IGNORABLE_SUFFIXES):
            return True
        # a tied model may still store its (identical) output projection
        return self.config.tied_embeddings and name == "lm_head.weight"

    def tokenizer(self) -> Any:
        from edgert_core.tokenizer import Tokenizer

        file = self.path / "tokenizer.json"
        if not os.path.lexists(file):
            return None
        check_regular(file, "Tokenizer file")
        return Tokenizer.from_file(file, self.config)


def _entry(
    file: Path, name: str, canon: str, spec: Any, data_start: int, model_type: str
) -> TensorEntry:
    try:
        dtype = str(spec["dtype"])
        shape = tuple(int(x) for x in spec["shape"])
        begin, end = (int(x) for x in spec["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{file} has a corrupt header entry for tensor {name}.") from None
    transposed = arch_of(model_type).hf_transposed(canon) and len(shape) == 2
    if transposed:
        shape = (shape[1], shape[0])
    info = TensorInfo(canon, shape, _DTYPES.get(dtype, dtype), end - begin)
    return TensorEntry(info, file, data_start + begin, name, transposed)
