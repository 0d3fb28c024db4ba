"""Hugging Face model folders: ``config.json`` + ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) + optional ``tokenizer.json``; LlamaForCausalLM and GPT2LMHeadModel.

Safetensors headers are parsed here (an 8-byte length and a JSON table of names, dtypes, shapes and
byte ranges); tensor data is read later, per tensor. GPT-2 stores its Conv1D weights ``[in, out]``;
they are described with the logical ``[out, in]`` shape and transposed when read.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from edgert_core.errors import ModelError
from edgert_core.layout import ModelDims, TensorInfo
from edgert_core.loaders.base import ModelSource, TensorEntry
from edgert_core.models.config import ModelConfig

SUPPORTED_MODEL_TYPES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}
_DTYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16"}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
#: Buffers some checkpoints carry that are not weights.
_IGNORABLE_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); the model folder is corrupt.") from None


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON table of a safetensors file and the absolute offset where its data starts."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelError(f"{path} is too short to be a safetensors file; download it again.")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                raise ModelError(
                    f"{path} is not a safetensors file or is truncated (header of {n} bytes in a "
                    f"file of {size}); download it again."
                )
            raw = f.read(n)
    except OSError as exc:
        raise ModelError(f"Cannot read {path}: {exc.strerror}.") from None
    try:
        table = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{path} is not a safetensors file (its header is not JSON).") from None
    if not isinstance(table, dict):
        raise ModelError(f"{path} is not a safetensors file (its header is not a JSON object).")
    return table, 8 + n


def _int(cfg: dict[str, Any], path: Path, *keys: str, default: int | None = None) -> int:
    for key in keys:
        if cfg.get(key) is not None:
            return int(cfg[key])
    if default is not None:
        return default
    raise ModelError(f"{path} lacks {keys[0]!r}; the model config is incomplete.")


def _llama_config(cfg: dict[str, Any], path: Path) -> ModelConfig:
    scaling = cfg.get("rope_scaling")
    params = cfg.get("rope_parameters") or {}
    rope_type = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or params.get(
        "rope_type", "default"
    )
    if rope_type not in ("default", None):
        raise ModelError(f"{path} uses RoPE scaling {rope_type!r}, which edge-rt does not support.")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ModelError(f"{path} uses attention or MLP biases, which edge-rt's llama does not support.")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelError(f"{path} uses activation {cfg['hidden_act']!r}; edge-rt's llama needs silu.")
    n_heads = _int(cfg, path, "num_attention_heads")
    hidden = _int(cfg, path, "hidden_size")
    dims = ModelDims(
        architecture="llama",
        n_layers=_int(cfg, path, "num_hidden_layers"),
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=_int(cfg, path, "num_key_value_heads", default=n_heads),
        head_dim=_int(cfg, path, "head_dim", default=hidden // n_heads),
        intermediate=_int(cfg, path, "intermediate_size"),
        vocab=_int(cfg, path, "vocab_size"),
        max_position=_int(cfg, path, "max_position_embeddings", default=2048),
    )
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    return ModelConfig(
        dims=dims,
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        rope_interleaved=False,
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=_ids(cfg.get("eos_token_id")),
    )


def _gpt2_config(cfg: dict[str, Any], path: Path) -> ModelConfig:
    act = cfg.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ModelError(f"{path} uses activation {act!r}; edge-rt's GPT-2 supports gelu_new.")
    if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("scale_attn_weights") is False:
        raise ModelError(f"{path} uses a GPT-2 attention scaling variant edge-rt does not support.")
    hidden = _int(cfg, path, "n_embd", "hidden_size")
    n_heads = _int(cfg, path, "n_head", "num_attention_heads")
    dims = ModelDims(
        architecture="gpt2",
        n_layers=_int(cfg, path, "n_layer", "num_hidden_layers"),
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        head_dim=hidden // n_heads,
        intermediate=_int(cfg, path, "n_inner", default=4 * hidden),
        vocab=_int(cfg, path, "vocab_size"),
        max_position=_int(cfg, path, "n_positions", "max_position_embeddings"),
    )
    return ModelConfig(
        dims=dims,
        norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=_ids(cfg.get("eos_token_id")),
    )


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    return (int(value),)


def canonical_name(architecture: str, name: str) -> str:
    if architecture == "gpt2":
        return name.removeprefix("transformer.")
    return name


class HFModel(ModelSource):
    """A Hugging Face model folder in the ``loaded`` state."""

    format = "hf"

    def __init__(self, path: Path) -> None:
        cfg_path = path / "config.json"
        cfg = _load_json(cfg_path)
        if not isinstance(cfg, dict):
            raise ModelError(f"{cfg_path} is not a JSON object; the model folder is corrupt.")
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            arch = (cfg.get("architectures") or [model_type])[0]
            raise ModelError(
                f"{path} holds a {arch} model (model_type {model_type!r}), which edge-rt does not "
                f"support; supported: {', '.join(SUPPORTED_MODEL_TYPES.values())}."
            )
        config = _llama_config(cfg, cfg_path) if model_type == "llama" else _gpt2_config(cfg, cfg_path)
        entries: dict[str, TensorEntry] = {}
        for file in self._weight_files(path):
            table, data_start = read_safetensors_header(file)
            for name, spec in table.items():
                if name == "__metadata__":
                    continue
                entries_name = canonical_name(model_type, name)
                entries[entries_name] = _entry(file, name, entries_name, spec, data_start, model_type)
        super().__init__(path, path.name, config, entries)
        tok_cfg = path / "tokenizer_config.json"
        if tok_cfg.is_file():
            template = _load_json(tok_cfg).get("chat_template")
            self.chat_template = template if isinstance(template, str) else None
        jinja = path / "chat_template.jinja"
        if self.chat_template is None and jinja.is_file():
            self.chat_template = jinja.read_text(encoding="utf-8")

    @staticmethod
    def _weight_files(path: Path) -> list[Path]:
        single = path / "model.safetensors"
        index = path / "model.safetensors.index.json"
        if single.is_file():
            return [single]
        if index.is_file():
            weight_map = _load_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ModelError(f"{index} has no weight_map; the model folder is corrupt.")
            files = list(dict.fromkeys(str(v) for v in weight_map.values()))
            missing = [f for f in files if not (path / f).is_file()]
            if missing:
                raise ModelError(
                    f"{path} is missing shard {missing[0]} listed in {index.name}; download it again."
                )
            return [path / f for f in files]
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise ModelError(
                f"{path} has PyTorch pickle weights only; edge-rt reads safetensors (save the model "
                "with safe_serialization=True)."
            )
        raise ModelError(f"{path} has config.json but no model.safetensors; download the weights.")

    def unexpected_ok(self, name: str) -> bool:
        if name.endswith(_IGNORABLE_SUFFIXES):
            return True
        # a tied model may still store its (identical) output projection
        return self.config.tied_embeddings and name == "lm_head.weight"

    def tokenizer(self) -> Any:
        from edgert_core.tokenizer import Tokenizer

        file = self.path / "tokenizer.json"
        if not file.is_file():
            return None
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
    transposed = model_type == "gpt2" and canon.endswith(_CONV1D) and len(shape) == 2
    if transposed:
        shape = (shape[1], shape[0])
    info = TensorInfo(canon, shape, _DTYPES.get(dtype, dtype), end - begin)
    return TensorEntry(info, file, data_start + begin, name, transposed)
