"""Parity with Hugging Face transformers.

Without torch: the committed reference fixtures (made by scripts/make_reference_fixtures.py). With the
``reference`` marker: live comparisons against transformers on the same weights (.ci/run installs
torch and transformers; these tests fail, never skip, when they are missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import model_helpers as mh
import numpy as np
import pytest

from edgert_core.api import Model, load_model
from edgert_core.generate import generate_ids

TINY_ATOL = 1e-4
SMOLLM2_ATOL = 1e-3


def greedy(model: Model, ids: list[int], n: int) -> list[int]:
    model.engine.cached_ids.clear()
    return list(generate_ids(model.engine, ids, max_tokens=n))  # no stop ids: exactly n tokens


@pytest.mark.parametrize("name", mh.TINY_MODELS)
def test_tiny_models_match_recorded_transformers(name: str) -> None:
    meta, ref = mh.reference(name)
    assert ref is not None
    model = load_model(mh.fixture(name), backend="numpy", max_context=64)
    logits = model.logits(meta["prompt_ids"])
    assert logits.dtype == np.float32 and logits.shape == ref.shape
    np.testing.assert_allclose(logits, ref, rtol=0, atol=TINY_ATOL)
    assert greedy(model, meta["prompt_ids"], len(meta["greedy_ids"])) == meta["greedy_ids"]


def test_gguf_conversion_of_tiny_llama_matches_transformers(tmp_path: Path) -> None:
    """llama.cpp permutes Q/K rows; the interleaved RoPE must undo exactly that."""
    meta, ref = mh.reference("tiny_llama")
    assert ref is not None
    path = mh.write_gguf(mh.fixture("tiny_llama"), tmp_path / "tiny.gguf", "F32")
    model = load_model(path, backend="numpy", max_context=64)
    np.testing.assert_allclose(model.logits(meta["prompt_ids"]), ref, rtol=0, atol=TINY_ATOL)
    assert greedy(model, meta["prompt_ids"], 16) == meta["greedy_ids"]


def smollm2() -> Model:
    return load_model(mh.smollm2_path(), backend="numpy", max_context=256)


def test_smollm2_matches_recorded_transformers() -> None:
    meta, _ = mh.reference("smollm2")
    model = smollm2()
    assert model.encode(meta["prompt"]) == meta["prompt_ids"]
    logits = model.logits(meta["prompt_ids"])
    assert logits.dtype == np.float32
    recorded = np.array(meta["logits"], dtype=np.float32)
    np.testing.assert_allclose(logits[:, meta["logit_indices"]], recorded, rtol=0, atol=SMOLLM2_ATOL)
    n = len(meta["greedy_ids"])
    assert n >= 32
    assert greedy(model, meta["prompt_ids"], n) == meta["greedy_ids"]


# -- live comparisons (marker: reference) ------------------------------------------------------


def hf_logits(folder: Path, ids: list[int], **kw: Any) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw)
    model.eval()
    with torch.no_grad():
        logits: np.ndarray = model(torch.tensor([ids])).logits[0].numpy()
    return logits


def hf_greedy(folder: Path, ids: list[int], n: int, **kw: Any) -> list[int]:
    """Greedy tokens by full forward passes (``generate`` would suppress EOS under
    ``min_new_tokens``; edge-rt's comparison runs without stop ids)."""
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw)
    model.eval()
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(torch.argmax(model(torch.tensor([out])).logits[0, -1])))
    return out[len(ids) :]


@pytest.mark.reference
@pytest.mark.parametrize("name", mh.TINY_MODELS)
def test_tiny_fixtures_live(name: str) -> None:
    meta, _ = mh.reference(name)
    ref = hf_logits(mh.fixture(name), meta["prompt_ids"])
    model = load_model(mh.fixture(name), backend="numpy", max_context=64)
    np.testing.assert_allclose(model.logits(meta["prompt_ids"]), ref, rtol=0, atol=TINY_ATOL)


@pytest.mark.reference
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fresh_random_models_live(arch: str, tmp_path: Path) -> None:
    """Models made now, with settings the fixtures do not use (eps, theta, head counts, untied)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    hf: Any
    if arch == "llama":
        llama: dict[str, Any] = dict(
            vocab_size=200, hidden_size=96, intermediate_size=200, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=96,
            rms_norm_eps=1e-5, rope_theta=1000.0, tie_word_embeddings=True, initializer_range=0.15,
        )
        hf = LlamaForCausalLM(LlamaConfig(**llama))
    else:
        gpt2: dict[str, Any] = dict(
            vocab_size=200, n_positions=96, n_embd=48, n_layer=3, n_head=3,
            initializer_range=0.15, layer_norm_epsilon=1e-4, tie_word_embeddings=False,
        )
        hf = GPT2LMHeadModel(GPT2Config(**gpt2))
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ids = [int(i) for i in torch.randint(0, 200, (40,))]
    model = load_model(tmp_path, backend="numpy", max_context=96)
    np.testing.assert_allclose(model.logits(ids), hf_logits(tmp_path, ids), rtol=0, atol=TINY_ATOL)
    assert greedy(model, ids, 20) == hf_greedy(tmp_path, ids, 20)


#: The architecture fixtures (see tests/test_arch.py for their recorded comparisons).
ARCH_MODELS = ("tiny_llama3", "tiny_qwen2", "tiny_qwen3", "tiny_phi3")


@pytest.mark.reference
@pytest.mark.parametrize("name", ARCH_MODELS)
def test_architecture_fixtures_live(name: str) -> None:
    meta, _ = mh.reference(name)
    ids = meta["prompt_ids"]
    model = load_model(mh.fixture(name), backend="numpy", max_context=64)
    np.testing.assert_allclose(model.logits(ids), hf_logits(mh.fixture(name), ids), rtol=0,
                               atol=TINY_ATOL)
    assert greedy(model, ids, 16) == hf_greedy(mh.fixture(name), ids, 16)


@pytest.mark.reference
@pytest.mark.parametrize("arch", ["llama3", "qwen2", "qwen3", "phi3"])
def test_fresh_random_architectures_live(arch: str, tmp_path: Path) -> None:
    """Models of the added architectures made now, with settings the fixtures do not use (head
    counts, head_dim, tying, RoPE scaling constants, eps)."""
    import torch
    import transformers as tf

    torch.manual_seed(7)
    common: dict[str, Any] = dict(
        vocab_size=200, hidden_size=96, intermediate_size=192, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=96,
        rms_norm_eps=1e-5, initializer_range=0.15, pad_token_id=None,
    )
    hf: Any
    if arch == "llama3":
        rope = dict(rope_type="llama3", rope_theta=50000.0, factor=32.0, low_freq_factor=1.0,
                    high_freq_factor=8.0, original_max_position_embeddings=64)
        hf = tf.LlamaForCausalLM(tf.LlamaConfig(**common, tie_word_embeddings=False,
                                                rope_parameters=rope))
    elif arch == "qwen2":
        hf = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, tie_word_embeddings=False))
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith("_proj.bias"):
                    p.copy_(0.3 * torch.randn_like(p))
    elif arch == "qwen3":
        hf = tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, head_dim=32, tie_word_embeddings=True))
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith("_norm.weight"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
    else:
        hf = tf.Phi3ForCausalLM(tf.Phi3Config(**common, tie_word_embeddings=True))
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ids = [int(i) for i in torch.randint(0, 200, (40,))]
    model = load_model(tmp_path, backend="numpy", max_context=96)
    np.testing.assert_allclose(model.logits(ids), hf_logits(tmp_path, ids), rtol=0, atol=TINY_ATOL)
    assert greedy(model, ids, 20) == hf_greedy(tmp_path, ids, 20)


@pytest.mark.reference
def test_smollm2_live() -> None:
    path = mh.smollm2_path()
    meta, _ = mh.reference("smollm2")
    ids = [*meta["prompt_ids"], 28, 357, 6461, 30, 378]
    model = smollm2()
    ref = hf_logits(path.parent, ids, gguf_file=path.name)
    np.testing.assert_allclose(model.logits(ids), ref, rtol=0, atol=SMOLLM2_ATOL)
    expected = hf_greedy(path.parent, meta["prompt_ids"], 32, gguf_file=path.name)
    assert greedy(model, meta["prompt_ids"], 32) == expected
