"""Loaders: header-only layouts, the loaded -> validated lifecycle, lazy reads into caller buffers,
sharded safetensors, GPT-2's Conv1D layout, and the synthetic model."""

from __future__ import annotations

import json
from pathlib import Path

import model_helpers as mh
import numpy as np
import pytest
from safetensors.numpy import save_file

from edgert_core.api import load_model, open_source
from edgert_core.loaders import GGUFModel, HFModel, ModelSource, ValidatedModel, open_model
from edgert_core.loaders.base import TensorEntry
from edgert_core.synthetic import SyntheticModel


def forbid_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: ModelSource, entry: TensorEntry, out: np.ndarray, byte_start: int = 0) -> None:
        raise AssertionError(f"tensor data of {entry.info.name} was read")

    monkeypatch.setattr(ModelSource, "read_into", boom)


def test_gguf_header_only_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "m.gguf", "Q8_0")
    forbid_reads(monkeypatch)
    source = open_model(path)
    assert isinstance(source, GGUFModel) and not hasattr(source, "read_tensor")
    validated = source.validate()
    layout = validated.layout()
    cfg = validated.config
    assert cfg.rope_interleaved and not cfg.tied_embeddings
    assert (cfg.dims.n_layers, cfg.dims.n_heads, cfg.dims.n_kv_heads) == (2, 4, 2)
    q = next(t for t in layout.layers[0].tensors if t.name.endswith("q_proj.weight"))
    assert q.shape == (64, 64) and q.dtype == "Q8_0" and q.nbytes == 64 * 2 * 34
    names = [t.name for t in layout.head]
    assert names == ["model.norm.weight", "lm_head.weight"]
    assert layout.embeddings[0].name == "model.embed_tokens.weight"
    assert validated.chat_template and "im_start" in validated.chat_template


def test_hf_header_only_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_reads(monkeypatch)
    validated = open_model(mh.fixture("tiny_gpt2")).validate()
    layout = validated.layout()
    assert layout.dims.architecture == "gpt2"
    c_attn = next(t for t in layout.layers[1].tensors if t.name == "h.1.attn.c_attn.weight")
    assert c_attn.shape == (192, 64) and c_attn.dtype == "F16" and c_attn.nbytes == 192 * 64 * 2
    assert [t.name for t in layout.embeddings] == ["wte.weight", "wpe.weight"]
    assert [t.name for t in layout.head] == ["ln_f.weight", "ln_f.bias", "wte.weight"]
    assert validated.config.tied_embeddings


def test_reads_into_caller_buffers_and_row_ranges(tmp_path: Path) -> None:
    path = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "m.gguf", "Q4_1")
    v = open_model(path).validate()
    name = "model.layers.1.mlp.up_proj.weight"
    whole = v.read_tensor(name)
    assert whole.dtype == np.uint8 and whole.nbytes == v.info(name).nbytes
    buf = np.full(whole.nbytes + 100, 7, dtype=np.uint8)
    into = v.read_tensor(name, out=buf)
    assert np.shares_memory(into, buf) and np.array_equal(into, whole)
    assert np.all(buf[whole.nbytes :] == 7)
    row = whole.nbytes // v.info(name).shape[0]
    np.testing.assert_array_equal(v.read_rows(name, 3, 9), whole[3 * row : 9 * row])
    ids = np.array([9, 0, 9], dtype=np.int64)
    rows = v.read_row_set(name, ids)
    np.testing.assert_array_equal(rows[0], whole[9 * row : 10 * row])
    np.testing.assert_array_equal(rows[1], whole[:row])


def test_gpt2_conv1d_weights_are_read_as_out_by_in() -> None:
    folder = mh.fixture("tiny_gpt2")
    stored = mh.load_tensors(folder / "model.safetensors")["transformer.h.0.mlp.c_fc.weight"]
    v = open_model(folder).validate()
    raw = v.read_tensor("h.0.mlp.c_fc.weight")
    logical = raw.view(np.float16).reshape(v.info("h.0.mlp.c_fc.weight").shape)
    np.testing.assert_array_equal(logical, stored.T)


def test_sharded_safetensors_folder_gives_the_same_model(tmp_path: Path) -> None:
    src = mh.fixture("tiny_llama")
    tensors = mh.load_tensors(src / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    for file, part in shards.items():
        save_file({n: np.ascontiguousarray(tensors[n]) for n in part}, str(tmp_path / file))
    index = {"metadata": {}, "weight_map": {n: f for f, part in shards.items() for n in part}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for extra in ("config.json", "tokenizer.json"):
        (tmp_path / extra).write_bytes((src / extra).read_bytes())
    meta, ref = mh.reference("tiny_llama")
    assert ref is not None
    sharded = load_model(tmp_path, backend="numpy", max_context=64)
    assert isinstance(sharded.source.source, HFModel)
    assert len({e.file for e in sharded.source.source.entries.values()}) == 2
    np.testing.assert_allclose(sharded.logits(meta["prompt_ids"]), ref, rtol=0, atol=1e-4)


def test_bf16_is_converted_exactly_on_load() -> None:
    v = open_model(mh.fixture("tiny_llama_bf16")).validate()
    model = load_model(mh.fixture("tiny_llama_bf16"), backend="numpy", max_context=16)
    name = "model.layers.0.mlp.up_proj.weight"
    w = model.engine._resident[0].layers[0]["mlp.up_proj.weight"]
    expected = mh.load_tensors(mh.fixture("tiny_llama_bf16") / "model.safetensors")[name]
    assert v.info(name).dtype == "BF16" and w.data.dtype == np.float32
    np.testing.assert_array_equal(w.data, expected)


def test_synthetic_model_is_deterministic_and_row_readable() -> None:
    a = SyntheticModel("gpt2-small", seed=3).validate()
    b = open_source("synthetic-gpt2-small").validate()
    name = "h.0.attn.c_proj.weight"
    whole = a.read_tensor(name)
    np.testing.assert_array_equal(a.read_rows(name, 250, 260), whole[250 * 768 * 4 : 260 * 768 * 4])
    np.testing.assert_array_equal(whole, SyntheticModel("gpt2-small", seed=3).validate().read_tensor(name))
    assert not np.array_equal(whole, b.read_tensor(name))  # another seed
    assert a.layout().total_weight_bytes == b.layout().total_weight_bytes
    assert isinstance(a, ValidatedModel) and a.format == "synthetic"


def test_smollm2_layout_from_the_pulled_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    path = mh.smollm2_path()
    forbid_reads(monkeypatch)
    v = open_model(path).validate()
    layout = v.layout()
    d = layout.dims
    assert (d.n_layers, d.hidden, d.n_heads, d.n_kv_heads, d.vocab) == (30, 576, 9, 3, 49152)
    assert v.config.tied_embeddings and v.config.rope_theta == 100000.0
    assert v.dtypes == {"F32", "Q4_1", "Q8_0"}
    assert layout.head[-1].dtype == "Q8_0" and layout.head[-1].nbytes == 49152 * 576 // 32 * 34
    assert all(len(layer.tensors) == 9 for layer in layout.layers)
    assert sum(t.nbytes for layer in layout.layers for t in layer.tensors) + 30081024 + 2304 < (
        path.stat().st_size
    )
