"""Exact by default: the ``neon`` backend computes with fp32 activations unless asked for ``q8``, and
then gives the numpy reference's greedy tokens and, on a 512-token text, its next-token
distributions to a mean KL divergence below 1e-6 (SmolLM2-135M-Instruct Q4_1; the numpy backend runs
fp32 math on the exactly dequantized weights, so only fp32 summation order differs).

``--activations q8`` (``load_model(activations="q8")``, preset key ``activations``) selects the
int8-activation path; these tests also check that it is a different, approximate computation, so
that the exact figures above are not met by a mode switch that does nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from edgert_neon_kernels import kernels

from edgert_core.api import Model, load_model
from edgert_core.errors import UnknownNameError
from edgert_core.testing import smollm2_for_tests

pytestmark = pytest.mark.slow

#: Varied prompts (prose, code, a list, a date) whose greedy continuations do not stop early.
PROMPTS = ("Once upon a time", "def fibonacci(n):", "The ship entered the port of", "In 1492, Columbus")
N_GREEDY = 48
KL_TOKENS = 512
KL_MAX = 1e-6
TEXT = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "perplexity_sample.txt"


def mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over positions of KL(P || Q) of the softmaxes of two float32 ``[T, vocab]`` logit arrays,
    in float64 (P is the reference)."""
    total = 0.0
    for a, b in zip(np.array_split(p_logits, 8), np.array_split(q_logits, 8), strict=True):
        la = a.astype(np.float64)
        lb = b.astype(np.float64)
        la -= la.max(-1, keepdims=True)
        lb -= lb.max(-1, keepdims=True)
        la -= np.log(np.exp(la).sum(-1, keepdims=True))
        lb -= np.log(np.exp(lb).sum(-1, keepdims=True))
        total += float((np.exp(la) * (la - lb)).sum())
    return total / p_logits.shape[0]


def open_model(backend: str, activations: str | None = None, max_context: int = 256) -> Model:
    return load_model(smollm2_for_tests(), backend=backend, activations=activations,
                      max_context=max_context, notify=None)


@pytest.fixture(scope="module")
def reference_tokens() -> Iterator[list[list[int]]]:
    with open_model("numpy") as model:
        yield [[t.id for t in model.generate(model.encode(p), max_tokens=N_GREEDY)] for p in PROMPTS]


def test_the_default_is_fp32_and_q8_is_chosen_by_name() -> None:
    assert kernels.load_error() == "", kernels.load_error()
    with open_model("neon") as model:
        assert model.activations == "f32"
        assert model.backend.act_q8 is False  # type: ignore[attr-defined]
    with open_model("neon", "q8") as model:
        assert model.activations == "q8"
    with pytest.raises(UnknownNameError, match=r"no activation mode 'q4'.*f32, q8"):
        open_model("neon", "q4")
    with pytest.raises(UnknownNameError, match=r"'numpy' has no activation mode 'q8'; it has: f32"):
        open_model("numpy", "q8")


def test_exact_mode_gives_the_reference_greedy_tokens(reference_tokens: list[list[int]]) -> None:
    with open_model("neon") as model:
        tokens = [[t.id for t in model.generate(model.encode(p), max_tokens=N_GREEDY)] for p in PROMPTS]
    for prompt, ref, got in zip(PROMPTS, reference_tokens, tokens, strict=True):
        assert len(ref) == N_GREEDY, (prompt, len(ref))  # no early stop: all 48 are compared
        assert got == ref, prompt


def test_exact_mode_kl_on_a_512_token_text_is_below_1e6() -> None:
    """Teacher-forced next-token distributions over 512 tokens of English text; the q8 mode on the
    same tokens must be measurably worse (so the mode really changes the computation)."""
    ids: list[int] = []
    results: dict[str, float] = {}
    logits: dict[str, np.ndarray] = {}
    for name, backend, mode in (("numpy", "numpy", None), ("f32", "neon", "f32"), ("q8", "neon", "q8")):
        with open_model(backend, mode, max_context=KL_TOKENS + 1) as model:
            if not ids:
                ids = model.encode(TEXT.read_text(encoding="utf-8"))[:KL_TOKENS]
                assert len(ids) == KL_TOKENS
            logits[name] = model.logits(ids)
        if name != "numpy":
            results[name] = mean_kl(logits["numpy"], logits[name])
            del logits[name]
    assert results["f32"] < KL_MAX, results
    assert results["q8"] > 100 * KL_MAX, results  # measured about 4e-3


def test_the_cli_reports_and_selects_the_mode(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "edgert_core", "run", "--model", str(smollm2_for_tests()),
            "--backend", "neon", "--prompt", "Hi", "--max-tokens", "2", "--json"]
    default = subprocess.run(base, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(default.stdout.splitlines()[-1])["activations"] == "f32"
    preset = tmp_path / "q8.toml"
    preset.write_text('activations = "q8"\n', encoding="utf-8")
    q8 = subprocess.run([*base, "-c", str(preset)], capture_output=True, text=True, timeout=120,
                        check=True)
    assert json.loads(q8.stdout.splitlines()[-1])["activations"] == "q8"
    bad = subprocess.run([*base, "--activations", "int4"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "f32, q8" in lines[0], bad.stderr


@pytest.mark.parametrize("activations", ["f32", "q8"])
def test_prompt_logits_equal_decoded_logits(activations: str) -> None:
    """The logits of every position from one pass over a prompt equal, bit for bit, those of the
    same tokens fed one at a time: the prompt kernels compute each output as the decode kernels do."""
    with open_model("neon", activations) as model:
        ids = model.encode("The capital of France is Paris, and the capital of Italy is")
        prompt = model.logits(ids)
        engine = model.engine
        engine.cached_ids.clear()
        one = np.stack([engine.forward([tok], i)[0] for i, tok in enumerate(ids)])
    assert len(ids) >= 8
    differ = prompt != one
    assert not differ.any(), (
        f"{int(differ.sum())} of {differ.size} logits differ, worst by "
        f"{float(np.abs(prompt - one).max()):.3g}"
    )


@pytest.mark.parametrize("activations", ["f32", "q8"])
def test_blocks_in_one_call_equal_the_ops_one_by_one(
    activations: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``llama_blocks`` (every resident block in one C call, plugin API 1.4), ``attention_block``
    and ``mlp_block`` (one C call per block part, 1.3) and the separate ops give bit for bit the
    same logits and greedy tokens, for a prompt and for decoding; and each is what runs (C calls
    per forward pass: a few for the whole model, about 2 a layer, about 10 a layer)."""
    text = TEXT.read_text()[:1500]

    def run(model: Model) -> tuple[np.ndarray, list[int], int]:
        ids = model.encode(text)[:200]
        calls0 = kernels.c_time()[0]
        logits = model.logits(ids)
        calls = kernels.c_time()[0] - calls0
        tokens = [t.id for t in model.generate(model.encode("Once upon a time"), max_tokens=16)]
        return logits, tokens, calls

    with open_model("neon", activations) as model:
        whole = run(model)
    with open_model("neon", activations) as model:
        monkeypatch.setattr(model.backend, "llama_blocks", lambda *a, **k: None)
        parts = run(model)
    with open_model("neon", activations) as model:
        monkeypatch.setattr(model.backend, "llama_blocks", lambda *a, **k: None)
        monkeypatch.setattr(model.backend, "attention_block", lambda *a, **k: None)
        monkeypatch.setattr(model.backend, "mlp_block", lambda *a, **k: None)
        separate = run(model)
    layers = model.config.dims.n_layers
    assert whole[2] <= 4 < parts[2] <= 2 * layers + 4 < separate[2], (whole[2], parts[2],
                                                                       separate[2])
    assert np.array_equal(whole[0], parts[0]) and np.array_equal(whole[0], separate[0])
    assert whole[1] == parts[1] == separate[1]
