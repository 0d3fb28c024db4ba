"""Helpers for tests that need models: fixture paths, the pulled SmolLM2 GGUF, tiny GGUF files.

Import from tests as ``import model_helpers``. Nothing here needs torch.
"""

from __future__ import annotations

import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from numpy.typing import NDArray
from safetensors.numpy import load_file

from edgert_core.memory.cgroup import MemoryCgroup
from edgert_core.testing import smollm2_for_tests

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE = FIXTURES / "reference"
TINY_MODELS = ("tiny_llama", "tiny_llama_bf16", "tiny_gpt2")


def fixture(name: str) -> Path:
    return FIXTURES / name


def vm_flags(address: int) -> list[str]:
    """The kernel's ``VmFlags`` of the mapping holding ``address`` in this process
    (``/proc/self/smaps``; ``hg``: advised for transparent huge pages)."""
    inside = False
    with open("/proc/self/smaps", encoding="ascii") as smaps:
        for line in smaps:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                inside = lo <= address < hi
            elif inside and parts and parts[0] == "VmFlags:":
                return parts[1:]
    raise LookupError(f"no mapping holds address {address:#x}")


def reference(name: str) -> tuple[dict[str, Any], NDArray[np.float32] | None]:
    """The recorded transformers outputs of a fixture model: metadata and ``[T, vocab]`` logits."""
    meta = json.loads((REFERENCE / f"{name}.json").read_text())
    logits_file = REFERENCE / f"{name}.logits.npy"
    return meta, (np.load(logits_file) if logits_file.exists() else None)


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF (see :func:`edgert_core.testing.smollm2_for_tests`)."""
    return smollm2_for_tests()


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            stdin: io.StringIO | None = None) -> tuple[int, str, str]:
    """Run ``edge-rt ARGS`` in this process as the console script does (``stdin``: what it reads);
    its exit status, stdout and stderr."""
    from edgert_core.cli.app import main

    monkeypatch.setattr(sys, "argv", ["edge-rt", *args])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", stdin)
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def llama_cpp_permute(w: NDArray[np.float32], n_head: int) -> NDArray[np.float32]:
    """Reorder the rows of a Q or K weight as llama.cpp's converter does (half-split pairs of each
    head become adjacent pairs)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def llama3_rope_factors(head_dim: int, rope: dict[str, Any]) -> NDArray[np.float32]:
    """The ``rope_freqs`` tensor llama.cpp's converter writes for ``rope_type: llama3``."""
    base = rope.get("rope_theta", 10000.0)
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(
    hf_folder: Path, out: Path, matrix_type: str = "F32", *, with_tokenizer: bool = True
) -> Path:
    """Convert a tiny Hugging Face folder of the Llama family (llama, qwen2, qwen3, phi3) to GGUF
    as llama.cpp's converter does: gguf-py's own tensor names, Q/K rows permuted for llama only, a
    ``rope_freqs`` tensor for Llama 3 scaling; 2-D weights stored as ``matrix_type`` (F32, F16,
    BF16, Q8_0, Q4_0, Q4_1)."""
    cfg = json.loads((hf_folder / "config.json").read_text())
    arch = cfg["model_type"]
    tensors = {k: v.astype(np.float32) for k, v in _load_any(hf_folder / "model.safetensors").items()}
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope = {"rope_theta": cfg.get("rope_theta", 10000.0), **(cfg.get("rope_parameters") or {})}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg["num_hidden_layers"])
    w = gguf.GGUFWriter(str(out), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if "head_dim" in cfg:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch == "phi3":
        w.add_rope_dimension_count(head_dim)
        w.add_rope_scaling_orig_ctx_len(cfg["original_max_position_embeddings"])
    w.add_vocab_size(cfg["vocab_size"])
    if with_tokenizer:
        _add_tokenizer(w, hf_folder / "tokenizer.json")
    if rope.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(head_dim, rope))
    qtype = gguf.GGMLQuantizationType[matrix_type]
    for name, arr in tensors.items():
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gname is not None, name
        if arch == "llama" and name.endswith("q_proj.weight"):
            arr = llama_cpp_permute(arr, n_head)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            arr = llama_cpp_permute(arr, n_kv)
        if arr.ndim == 2 and matrix_type != "F32":
            data = gguf.quants.quantize(arr, qtype)
            w.add_tensor(gname, data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            w.add_tensor(gname, np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _load_any(path: Path) -> dict[str, NDArray[Any]]:
    """Safetensors tensors as numpy, bf16 widened to fp32 (numpy has no bf16)."""
    from edgert_core.loaders.hf_loader import read_safetensors_header

    table, start = read_safetensors_header(path)
    raw = path.read_bytes()
    out: dict[str, NDArray[Any]] = {}
    for name, spec in table.items():
        if name == "__metadata__":
            continue
        a, b = spec["data_offsets"]
        buf = np.frombuffer(raw, dtype=np.uint8, count=b - a, offset=start + a)
        if spec["dtype"] == "BF16":
            arr = (buf.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = buf.view({"F32": np.float32, "F16": np.float16}[spec["dtype"]])
        out[name] = arr.reshape(spec["shape"])
    return out


def _add_tokenizer(w: gguf.GGUFWriter, tokenizer_json: Path) -> None:
    data = json.loads(tokenizer_json.read_text())
    vocab: dict[str, int] = data["model"]["vocab"]
    for added in data.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = {a["content"] for a in data.get("added_tokens", []) if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
        "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


def load_tensors(path: Path) -> dict[str, NDArray[Any]]:
    """A safetensors file as numpy arrays (bf16 widened to fp32)."""
    if path.suffix == ".safetensors":
        return _load_any(path)
    return dict(load_file(str(path)))


def real_memory_cgroup(limit_bytes: int) -> MemoryCgroup:
    """A fresh memory cgroup of ``limit_bytes`` under this process's own, made; or the test is
    skipped with the reason (making one needs root and a writable memory controller). The caller
    removes it."""
    from edgert_core.errors import MemoryLimitError
    from edgert_core.memory.cgroup import own_parent

    try:
        cgroup = MemoryCgroup(limit_bytes, parent=own_parent())
        cgroup.create()
    except MemoryLimitError as exc:
        pytest.skip(f"needs root and a writable memory cgroup: {exc}")
    return cgroup


def edge_rt_command() -> list[str]:
    """The console script next to this interpreter (what a user runs), else ``python -m``."""
    script = Path(sys.executable).with_name("edge-rt")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "edgert_core"]


def set_mem_available(root: Path, nbytes: int) -> None:
    """Rewrite ``MemAvailable`` in the fake tree ``root``'s ``proc/meminfo`` (the ``pi4`` fixture)."""
    path = root / "proc" / "meminfo"
    text = re.sub(r"^MemAvailable:\s+\d+ kB$", f"MemAvailable:   {nbytes // 1024} kB",
                  path.read_text(), flags=re.M)
    assert f"{nbytes // 1024} kB" in text
    path.write_text(text)
