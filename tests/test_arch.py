"""The architecture tables, and the architectures added through them: Llama 3 RoPE scaling, Qwen2,
Qwen3 and Phi-3, in both formats, on the numpy and the quantized (``neon``) backend.

The references are transformers' outputs recorded by scripts/make_reference_fixtures.py (live
comparisons are in test_parity.py, marker ``reference``). GGUF files are written here the way
llama.cpp's converter writes them, with the names of gguf-py's own ``TensorNameMap`` (not the
table under test): Q/K rows permuted for ``llama`` only, Phi-3's fused matrices kept whole, the
``rope_freqs`` tensor for Llama 3's RoPE scaling.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import gguf
import model_helpers as mh
import numpy as np
import pytest

from edgert_core.api import Model, load_model
from edgert_core.errors import ModelError
from edgert_core.generate import generate_ids
from edgert_core.layout import BLOCK_PARTS, layout_from_dims
from edgert_core.loaders import open_model
from edgert_core.loaders.base import expected_shapes
from edgert_core.models.arch import ARCHITECTURES
from edgert_core.models.transformer import FUSIONS
from edgert_core.plan import PlanningContext, minimum_budget

ATOL = 1e-4
#: The architecture fixtures: name -> (GGUF architecture, tied output projection).
MODELS = {
    "tiny_llama3": ("llama", True),
    "tiny_qwen2": ("qwen2", True),
    "tiny_qwen3": ("qwen3", False),
    "tiny_phi3": ("phi3", False),
}
#: The existing fixtures the tables must keep describing.
ALL_HF = (*MODELS, "tiny_llama", "tiny_llama_bf16", "tiny_gpt2")


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("arch")
    return {(name, t): mh.write_gguf(mh.fixture(name), folder / f"{name}.{t}.gguf", t)
            for name in MODELS for t in ("F32", "Q8_0")}


def greedy(model: Model, ids: list[int], n: int) -> list[int]:
    model.engine.cached_ids.clear()
    return list(generate_ids(model.engine, ids, max_tokens=n))


# -- the tables ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [a for a in ARCHITECTURES if ARCHITECTURES[a].gguf_arch])
def test_gguf_names_are_llama_cpps(name: str) -> None:
    """Every name the table derives is the one gguf-py's TensorNameMap gives the Hugging Face name."""
    arch = ARCHITECTURES[name]
    assert arch.gguf_arch is not None
    ref = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_arch.upper()], 3)
    shapes = expected_shapes_of(name, tied=False)
    assert shapes
    for canon in shapes:
        expected = ref.get_name(canon, try_suffixes=(".weight", ".bias"))
        assert arch.gguf_from_canonical(canon) == expected, canon
        assert arch.canonical_from_gguf(expected) == canon


def expected_shapes_of(name: str, *, tied: bool) -> dict[str, tuple[int, ...]]:
    from edgert_core.layout import SMOLLM2_135M

    dims = replace(SMOLLM2_135M, architecture=name, n_layers=3)
    layout = layout_from_dims("t", dims, tied_embeddings=tied)
    out = {t.name: t.shape for layer in layout.layers for t in layer.tensors}
    out.update({t.name: t.shape for t in (*layout.embeddings, *layout.head)})
    return out


@pytest.mark.parametrize("name", ALL_HF)
def test_expected_tensors_are_exactly_the_files(name: str) -> None:
    """The table's names and shapes are exactly what transformers saved (no tensor left over, none
    missing), and every tensor of a block is in one of its parts."""
    source = open_model(mh.fixture(name))
    expected = expected_shapes(source.config)
    stored = {n: e.info.shape for n, e in source.entries.items()}
    assert stored == expected
    arch = source.config.architecture
    part_names = {n for _, names in BLOCK_PARTS[arch] for n in names}
    prefix = ARCHITECTURES[arch].layer_prefix(1)
    assert {n.removeprefix(prefix) for n in stored if n.startswith(prefix)} == part_names


def test_fusions_and_parts_come_from_the_rows() -> None:
    assert FUSIONS["llama"] == {
        "qkv": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        "gate_up": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    }
    assert FUSIONS["phi3"] == {} and FUSIONS["gpt2"] == {}  # stored fused already / Conv1D
    assert "self_attn.q_proj.bias" in BLOCK_PARTS["qwen2"][0][1]
    assert "self_attn.k_norm.weight" in BLOCK_PARTS["qwen3"][0][1]
    assert BLOCK_PARTS["phi3"][1][1] == ("post_attention_layernorm.weight", "mlp.gate_up_proj.weight")


# -- parity ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "neon"])
@pytest.mark.parametrize("fmt", ["hf", "gguf"])
@pytest.mark.parametrize("name", MODELS)
def test_matches_recorded_transformers(
    name: str, fmt: str, backend: str, ggufs: dict[tuple[str, str], Path]
) -> None:
    meta, ref = mh.reference(name)
    assert ref is not None
    path = mh.fixture(name) if fmt == "hf" else ggufs[name, "F32"]
    model = load_model(path, backend=backend, max_context=64, notify=None)
    assert model.config.architecture == MODELS[name][0]
    assert model.config.tied_embeddings == MODELS[name][1]
    logits = model.logits(meta["prompt_ids"])
    np.testing.assert_allclose(logits, ref, rtol=0, atol=ATOL)
    assert greedy(model, meta["prompt_ids"], 16) == meta["greedy_ids"]


@pytest.mark.parametrize("name", MODELS)
def test_quantized_backend_matches_numpy_on_q8_blocks(
    name: str, ggufs: dict[tuple[str, str], Path]
) -> None:
    """The ``neon`` backend runs its kernels on the Q8_0 blocks (fp32 activations); the numpy
    backend runs exactly dequantized weights: the same logits and greedy tokens."""
    meta, _ = mh.reference(name)
    ids = meta["prompt_ids"]
    ref_model = load_model(ggufs[name, "Q8_0"], backend="numpy", max_context=64, notify=None)
    ref = ref_model.logits(ids)
    model = load_model(ggufs[name, "Q8_0"], backend="neon", max_context=64, notify=None)
    model.backend.act_q8 = False  # type: ignore[attr-defined]
    # held as Q8_0 blocks (34 bytes per 32 weights), not as the numpy backend's fp32
    assert model.layout.total_weight_bytes < 0.3 * ref_model.layout.total_weight_bytes
    np.testing.assert_allclose(model.logits(ids), ref, rtol=0, atol=ATOL)
    assert greedy(model, ids, 16) == greedy(ref_model, ids, 16)


@pytest.mark.parametrize("name", MODELS)
def test_budgeted_streamed_run_gives_the_same_tokens(
    name: str, ggufs: dict[tuple[str, str], Path]
) -> None:
    path = ggufs[name, "Q8_0"]
    ids = [5, 6, 7, 8, 9, 10, 11]
    free = load_model(path, backend="numpy", max_context=64, prefill_chunk=4, notify=None)
    reference = free.generate(ids, max_tokens=12).result().ids
    budget = minimum_budget(free.layout, PlanningContext(None, max_context=64, prefill_chunk=4))
    free.close()
    model = load_model(path, backend="numpy", memory_budget=budget, max_context=64,
                       prefill_chunk=4, notify=None, strategy="sequential")
    assert model.engine.plan.streamed_bytes_per_token(model.layout) > 0  # weights are streamed
    assert model.generate(ids, max_tokens=12).result().ids == reference
    assert model.engine.pool.peak_bytes <= budget
    model.close()


@pytest.mark.parametrize("name", [n for n, (_, tied) in MODELS.items() if tied])
def test_untied_head_runs_the_same(name: str, tmp_path: Path) -> None:
    """A tied fixture saved untied (``lm_head.weight`` a copy of the embedding): the output
    projection is read from its own tensor, and the outputs are the recorded ones."""
    from safetensors.numpy import save_file

    tensors = mh._load_any(mh.fixture(name) / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    cfg = json.loads((mh.fixture(name) / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    meta, ref = mh.reference(name)
    model = load_model(tmp_path, backend="numpy", max_context=64, notify=None)
    assert not model.config.tied_embeddings
    assert "lm_head.weight" in {t.name for t in model.layout.head}
    np.testing.assert_allclose(model.logits(meta["prompt_ids"]), ref, rtol=0, atol=ATOL)


# -- what each addition changes --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_llama3_scaling_is_applied(fmt: str, ggufs: dict[tuple[str, str], Path]) -> None:
    """Without its RoPE scaling the Llama 3 fixture's logits are far off: the scaling is used."""
    meta, ref = mh.reference("tiny_llama3")
    path = mh.fixture("tiny_llama3") if fmt == "hf" else ggufs["tiny_llama3", "F32"]
    model = load_model(path, backend="numpy", max_context=64, notify=None)
    cfg = model.config
    assert (cfg.rope_llama3 is not None) if fmt == "hf" else (cfg.rope_freq_factors is not None)
    plain = replace(cfg, rope_llama3=None, rope_freq_factors=None)
    from edgert_core.models.transformer import Transformer

    model.engine.transformer = Transformer(plain, model.backend, 64)  # type: ignore[attr-defined]
    model.engine.cached_ids.clear()
    assert np.abs(model.logits(meta["prompt_ids"]) - ref).max() > 100 * ATOL


def test_gguf_rope_freqs_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = mh.write_gguf(mh.fixture("tiny_llama3"), tmp_path / "a.gguf")
    good = open_model(path)
    assert good.config.rope_freq_factors is not None and len(good.config.rope_freq_factors) == 8
    bad = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(bad), "llama")
    w.add_block_count(0)
    w.add_embedding_length(64)
    w.add_feed_forward_length(160)
    w.add_head_count(4)
    w.add_vocab_size(384)
    w.add_tensor("rope_freqs.weight", np.ones(5, dtype=np.float32))
    w.add_tensor("token_embd.weight", np.zeros((384, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match=r"rope_freqs.weight is F32 \[5\] but .* F32 \[8\]"):
        open_model(bad)


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_unsupported_architecture_is_one_line_listing_the_supported(
    fmt: str, tmp_path: Path
) -> None:
    if fmt == "hf":
        (tmp_path / "config.json").write_text(json.dumps(
            {"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
        path = tmp_path
    else:
        path = tmp_path / "m.gguf"
        w = gguf.GGUFWriter(str(path), "mamba")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    with pytest.raises(ModelError) as err:
        open_model(path)
    message = str(err.value)
    assert "\n" not in message and "mamba" in message.lower()
    for arch in ARCHITECTURES.values():
        assert arch.hf_class in message
        if arch.gguf_arch:
            assert arch.gguf_arch in message


@pytest.mark.parametrize(("name", "key", "value"), [
    ("tiny_qwen3", "attention_bias", True),
    ("tiny_qwen2", "use_sliding_window", True),
    ("tiny_phi3", "rope_parameters", {"rope_type": "longrope", "rope_theta": 10000.0}),
    ("tiny_phi3", "partial_rotary_factor", 0.5),
    ("tiny_llama3", "rope_parameters", {"rope_type": "yarn", "rope_theta": 10000.0}),
])
def test_unsupported_variants_are_refused(name: str, key: str, value: Any, tmp_path: Path) -> None:
    for f in mh.fixture(name).iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[key] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=key.split("_")[0]):
        open_model(tmp_path)
