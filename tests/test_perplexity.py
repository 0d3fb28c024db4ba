"""``edge-rt perplexity``: the math against a plain float64 reference (and properties), the windows
as llama-perplexity takes them, the driver on fake models, ``Model.logits(start=)``, and the command
on SmolLM2 (exact activations against the numpy reference, int8 activations, a quantized KV cache,
turn-taking under a budget) and its errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import model_helpers as mh
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray

from edgert_core.api import load_model
from edgert_core.errors import GenerationError
from edgert_core.perplexity import (
    Summary,
    evaluate,
    kl_divergence,
    log_softmax,
    nll,
    percentile,
    perplexity,
    perplexity_stderr,
    score_positions,
    scored_per_window,
    top1_same,
    window_count,
    window_input,
    window_targets,
)

SAMPLE = mh.FIXTURES / "perplexity_sample.txt"


# -- a plain reference: one row at a time, Python floats -------------------------------------------

def ref_log_softmax_row(row: Sequence[float]) -> list[float]:
    m = max(row)
    total = math.fsum(math.exp(x - m) for x in row)
    return [x - m - math.log(total) for x in row]


def ref_kl_row(ref_row: Sequence[float], row: Sequence[float]) -> float:
    p = [math.exp(v) for v in ref_log_softmax_row(ref_row)]
    q = [math.exp(v) for v in ref_log_softmax_row(row)]
    return math.fsum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def logits_arrays(max_rows: int = 6, max_vocab: int = 40) -> st.SearchStrategy[NDArray[np.float64]]:
    shapes = st.tuples(st.integers(1, max_rows), st.integers(2, max_vocab))
    return shapes.flatmap(lambda s: arrays(np.float64, s, elements=st.floats(-30, 30)))


def test_log_softmax_nll_kl_and_top1_match_the_plain_reference() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0, 4, (7, 33)).astype(np.float32)
    b = (a + rng.normal(0, 0.5, a.shape)).astype(np.float32)
    targets = rng.integers(0, 33, 7)
    lp = log_softmax(a)
    assert lp.dtype == np.float64
    for i in range(7):
        np.testing.assert_allclose(lp[i], ref_log_softmax_row(a[i].tolist()), rtol=0, atol=1e-12)
    np.testing.assert_allclose(nll(lp, targets), [-lp[i, t] for i, t in enumerate(targets)])
    kl = kl_divergence(log_softmax(a), log_softmax(b))
    np.testing.assert_allclose(kl, [ref_kl_row(a[i].tolist(), b[i].tolist()) for i in range(7)],
                               rtol=1e-9, atol=1e-13)
    assert (kl > 1e-3).all()  # the two differ: a zero here would be a broken formula
    np.testing.assert_array_equal(top1_same(a, b), [int(np.argmax(a[i])) == int(np.argmax(b[i]))
                                                    for i in range(7)])


def test_kl_is_the_references_distribution_first() -> None:
    p = np.log(np.array([[0.9, 0.1]]))
    q = np.log(np.array([[0.5, 0.5]]))
    forward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    backward = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_divergence(p, q)[0] == pytest.approx(forward, rel=1e-12)
    assert kl_divergence(q, p)[0] == pytest.approx(backward, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(logits_arrays(), st.data())
def test_kl_is_never_negative_and_zero_against_itself(a: NDArray[np.float64], data: st.DataObject) -> None:
    b = data.draw(arrays(np.float64, a.shape, elements=st.floats(-30, 30)))
    assert (kl_divergence(log_softmax(a), log_softmax(b)) >= 0).all()
    assert (kl_divergence(log_softmax(a), log_softmax(a)) == 0).all()


@settings(max_examples=60, deadline=None)
@given(logits_arrays(), st.floats(-50, 50))
def test_log_softmax_is_normalized_and_shift_invariant(a: NDArray[np.float64], c: float) -> None:
    lp = log_softmax(a)
    np.testing.assert_allclose(np.exp(lp).sum(axis=-1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(log_softmax(a + c), lp, rtol=0, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5000), st.integers(1, 20), st.floats(-20, 20))
def test_a_uniform_model_has_the_vocabulary_size_as_perplexity(vocab: int, n: int, c: float) -> None:
    logits = np.full((n, vocab), c, dtype=np.float32)
    targets = np.arange(n) % vocab
    assert perplexity(nll(log_softmax(logits), targets)) == pytest.approx(vocab, rel=1e-9)


def test_perplexity_and_its_stderr() -> None:
    nlls = np.array([1.0, 2.0, 3.0, 6.0])
    assert perplexity(nlls) == pytest.approx(math.exp(3.0))
    # llama.cpp: ppl * sqrt((mean(x^2) - mean(x)^2) / (n - 1))
    var = (1 + 4 + 9 + 36) / 4 - 9.0
    assert perplexity_stderr(nlls) == pytest.approx(math.exp(3.0) * math.sqrt(var / 3))
    assert perplexity_stderr(np.array([2.0])) == 0.0
    with pytest.raises(ValueError):
        perplexity(np.array([]))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e6, 1e6)),
       st.floats(0, 1))
def test_percentile_interpolates_linearly_as_numpy(values: NDArray[np.float64], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, 100 * q)),
                                                  rel=1e-9, abs=1e-6)


def test_percentile_by_hand() -> None:
    v = np.array([4.0, 1.0, 3.0, 2.0])  # sorted 1 2 3 4
    assert percentile(v, 0.5) == 2.5
    assert percentile(v, 0.99) == pytest.approx(3 + 0.97)
    assert percentile(v, 0) == 1.0 and percentile(v, 1) == 4.0


def test_score_positions_in_blocks_equals_one_block() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 3, (37, 50)).astype(np.float32)
    b = rng.normal(0, 3, (37, 50)).astype(np.float32)
    t = rng.integers(0, 50, 37)
    one = score_positions(a, b, t, block_rows=1000)
    small = score_positions(a, b, t, block_rows=5)
    for name in ("nll", "reference_nll", "kl", "same_top"):
        np.testing.assert_array_equal(getattr(one, name), getattr(small, name))
    np.testing.assert_allclose(one.nll, nll(log_softmax(a), t))
    np.testing.assert_allclose(one.reference_nll, nll(log_softmax(b), t))


# -- windows as llama-perplexity takes them ----------------------------------------------------------

def test_windows_and_scored_positions() -> None:
    assert scored_per_window(512) == 255 and scored_per_window(7) == 3
    assert window_count(1024, 512) == 2 and window_count(1535, 512) == 2
    with pytest.raises(GenerationError, match=r"has 1023 tokens .* needs at least 1024 .*at most 511"):
        window_count(1023, 512)
    ids = list(range(100, 120))
    assert window_input(ids, 1, 8, bos=None) == [108, 109, 110, 111, 112, 113, 114]
    assert window_input(ids, 1, 8, bos=1) == [1, 109, 110, 111, 112, 113, 114]
    assert ids[8] == 108  # the window's copy was changed, not the ids
    assert window_targets(ids, 1, 8).tolist() == [113, 114, 115]  # what positions 4, 5, 6 predict


class FakeModel:
    """Logits that depend on the whole prefix (a hash of it), so a wrong window, position or
    prefix changes them; counts calls and closes."""

    def __init__(self, vocab: int, salt: int = 0, uniform: bool = False, noise: float = 0.0) -> None:
        self.vocab, self.salt, self.uniform, self.noise = vocab, salt, uniform, noise
        self.calls: list[tuple[list[int], int]] = []
        self.closes = 0

    def row(self, prefix: Sequence[int]) -> NDArray[np.float32]:
        if self.uniform:
            return np.zeros(self.vocab, dtype=np.float32)
        base = np.random.default_rng(hash(tuple(prefix)) % (2**32)).normal(0, 2, self.vocab)
        other = np.random.default_rng(hash((self.salt, *prefix)) % (2**32)).normal(0, 1, self.vocab)
        return (base + self.noise * other).astype(np.float32)

    def logits(self, ids: Sequence[int], *, start: int = 0) -> NDArray[np.float32]:
        self.calls.append((list(ids), start))
        return np.stack([self.row(ids[: j + 1]) for j in range(start, len(ids))])

    def close(self) -> None:
        self.closes += 1


def brute_force(model: FakeModel, ref: FakeModel, ids: list[int], ctx: int,
                bos: int | None) -> tuple[float, float, float]:
    """ppl, mean KL, top-1 by llama.cpp's loops written out: window i, positions ctx/2..ctx-2."""
    nlls, kls, same = [], [], []
    for i in range(len(ids) // ctx):
        win = ids[i * ctx : (i + 1) * ctx]
        if bos is not None:
            win = [bos, *win[1:]]
        for j in range(ctx // 2, ctx - 1):
            a, b = model.row(win[: j + 1]), ref.row(win[: j + 1])
            target = ids[i * ctx + j + 1]
            nlls.append(-ref_log_softmax_row(a.tolist())[target])
            kls.append(ref_kl_row(b.tolist(), a.tolist()))
            same.append(int(np.argmax(a)) == int(np.argmax(b)))
    return math.exp(math.fsum(nlls) / len(nlls)), math.fsum(kls) / len(kls), sum(same) / len(same)


@pytest.mark.parametrize("bos", [None, 0])
def test_the_driver_scores_what_llama_perplexity_scores(bos: int | None) -> None:
    rng = np.random.default_rng(2)
    ids = rng.integers(1, 20, 53).tolist()  # 3 windows of 16, a tail of 5 left out
    model, ref = FakeModel(20), FakeModel(20, salt=2, noise=1.0)  # related, not the same
    summary = Summary()
    for result in evaluate(model, ref, ids, 16, bos=bos):
        summary.add(result)
    f = summary.figures()
    ppl, kl, top1 = brute_force(model, ref, ids, 16, bos)
    assert f["tokens"] == 3 * 7 and summary.windows == 3
    assert f["ppl"] == pytest.approx(ppl, rel=1e-9)
    assert f["kl_mean"] == pytest.approx(kl, rel=1e-9)
    assert f["top1_agreement"] == pytest.approx(top1)
    assert 0 < f["top1_agreement"] < 1 and f["kl_mean"] > 1e-2  # neither trivial
    assert [c[1] for c in model.calls] == [8, 8, 8]  # logits of the second half only
    assert all(len(c[0]) == 15 for c in model.calls)  # ctx - 1 tokens: the last is only a target
    assert model.calls == ref.calls and model.closes == 0


def test_the_driver_takes_turns_and_stops_after_max_windows() -> None:
    ids = list(range(1, 41))
    model, ref = FakeModel(50), FakeModel(50)
    results = list(evaluate(model, ref, ids, 8, one_at_a_time=True, max_windows=2))
    assert len(results) == 2 and model.closes == 2 and ref.closes == 2
    assert all((r.scores.kl == 0).all() and r.scores.same_top.all() for r in results)  # same model


def test_a_uniform_fake_model_has_the_vocabulary_size_as_perplexity() -> None:
    model = FakeModel(37, uniform=True)
    summary = Summary()
    for result in evaluate(model, FakeModel(37, salt=5, noise=1.0), [i % 37 for i in range(45)], 10):
        summary.add(result)
    assert summary.figures()["ppl"] == pytest.approx(37, rel=1e-12)
    assert summary.figures()["reference_ppl"] != pytest.approx(37, rel=1e-3)


def test_the_driver_refuses_a_short_text_and_zero_windows() -> None:
    with pytest.raises(GenerationError, match="needs at least 32"):
        list(evaluate(FakeModel(5), FakeModel(5), list(range(31)), 16))
    with pytest.raises(GenerationError, match="--chunks must be at least 1"):
        list(evaluate(FakeModel(5), FakeModel(5), list(range(40)), 16, max_windows=0))


# -- Model.logits(start=) -----------------------------------------------------------------------------

def test_model_logits_from_a_start_are_the_rows_of_all_logits() -> None:
    model = load_model(mh.fixture("tiny_llama"), backend="numpy", max_context=64)
    ids = list(range(3, 40))
    full = model.logits(ids)
    part = model.logits(ids, start=20)
    assert part.shape == (17, full.shape[1])
    np.testing.assert_allclose(part, full[20:], rtol=0, atol=1e-5)
    with pytest.raises(GenerationError, match=r"start must be in 0\.\.36"):
        model.logits(ids, start=37)


def test_model_logits_under_a_tight_budget_take_the_rows_in_passes() -> None:
    ids = list(range(1000, 1100))
    free = load_model(mh.smollm2_path(), backend="neon", max_context=128, notify=None)
    want = free.logits(ids, start=50)
    free.close()
    tight = load_model(mh.smollm2_path(), backend="neon", max_context=128, memory_budget="48M",
                       notify=None)
    assert tight._logits_rows_that_fit() < 50  # so the rows really go in several passes
    got = tight.logits(ids, start=50)
    assert tight.engine.pool.stats().peak_bytes <= 48 * 2**20
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


# -- the command on SmolLM2 -------------------------------------------------------------------------

def perplexity_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                    *extra: str) -> dict[str, object]:
    code, out, err = mh.run_cli(["perplexity", "--model", str(mh.smollm2_path()), "--file",
                                 str(SAMPLE), "--ctx", "64", "--chunks", "3", "--json", *extra],
                                monkeypatch, capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # one object, nothing else on stdout
    result: dict[str, object] = json.loads(lines[0])
    return result


@pytest.fixture(scope="module")
def exact_run() -> dict[str, object]:
    """neon in exact mode against numpy, as a user runs it (a fresh process)."""
    out = subprocess.run(
        [sys.executable, "-m", "edgert_core", "perplexity", "--model", str(mh.smollm2_path()),
         "--file", str(SAMPLE), "--ctx", "64", "--chunks", "3", "--json"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_exact_activations_agree_with_the_numpy_reference(exact_run: dict[str, object]) -> None:
    r = exact_run
    for key in ("model", "backend", "activations", "kv_cache", "tokens", "ppl", "reference_ppl",
                "kl_mean", "kl_p99", "top1_agreement", "tokens_per_s"):
        assert key in r, key
    assert r["backend"] == "neon" and r["activations"] == "f32" and r["kv_cache"] == "f32"
    assert r["reference"] == "numpy" and r["windows"] == 3 and r["tokens"] == 3 * 31
    assert isinstance(r["file_tokens"], int) and r["file_tokens"] > 2000
    assert float(r["kl_mean"]) < 1e-6 and float(r["kl_p99"]) < 1e-5  # type: ignore[arg-type]
    assert r["top1_agreement"] == 1.0
    assert float(r["ppl"]) == pytest.approx(float(r["reference_ppl"]), rel=1e-4)  # type: ignore[arg-type]
    assert 2 < float(r["ppl"]) < 200  # English text: neither broken nor memorized  # type: ignore[arg-type]
    assert float(r["tokens_per_s"]) > 0  # type: ignore[arg-type]


def test_int8_activations_and_a_q8_kv_cache_cost_kl(
        exact_run: dict[str, object], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    q8 = perplexity_json(monkeypatch, capsys, "--activations", "q8", "--chunks", "2")
    assert q8["activations"] == "q8"
    assert float(q8["kl_mean"]) > 100 * float(exact_run["kl_mean"])  # type: ignore[arg-type]
    assert float(q8["kl_mean"]) > 1e-5  # type: ignore[arg-type]
    assert q8["tokens"] == 2 * 31
    # the KV cache against neon's own exact mode (as exact as numpy, above; no fp32 copy to load)
    kv = perplexity_json(monkeypatch, capsys, "--kv-cache", "q8_0", "--chunks", "2",
                         "--reference", "neon")
    assert kv["kv_cache"] == "q8_0" and kv["activations"] == "f32" and kv["reference"] == "neon"
    assert float(kv["kl_mean"]) > 100 * float(exact_run["kl_mean"])  # type: ignore[arg-type]
    assert float(kv["kl_mean"]) > 1e-6  # type: ignore[arg-type]


def test_under_a_budget_the_models_take_turns(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # neon against neon (both exact): the same numbers, so KL is 0 whatever order they ran in
    r = perplexity_json(monkeypatch, capsys, "--reference", "neon", "--memory-budget", "64M",
                        "--chunks", "2")
    assert r["one_at_a_time"] is True and r["budget_bytes"] == 64 * 2**20
    assert r["kl_mean"] == 0.0 and r["top1_agreement"] == 1.0
    assert r["ppl"] == r["reference_ppl"]


def test_the_human_output_has_no_progress_bar_when_piped(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = mh.run_cli(["perplexity", "-m", str(mh.smollm2_path()), "-f", str(SAMPLE),
                                 "--ctx", "32", "--chunks", "2"], monkeypatch, capsys)
    assert code == 0, err
    assert "PPL" in out and "KL" in out and "top-1" in out and "tok/s" in out
    assert "\x1b[" not in out + err and "━" not in err  # no bar, no terminal codes
    assert "2 windows of 32" in out


# -- errors: one line each ----------------------------------------------------------------------------

def one_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
              *args: str) -> str:
    code, out, err = mh.run_cli(["perplexity", *args], monkeypatch, capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                tmp_path: Path) -> None:
    model = str(mh.smollm2_path())
    missing = tmp_path / "nope.txt"
    assert str(missing) in one_error(monkeypatch, capsys, "-m", model, "-f", str(missing))
    short = tmp_path / "short.txt"
    short.write_text("Only a few words of text here.", encoding="utf-8")
    msg = one_error(monkeypatch, capsys, "-m", model, "-f", str(short), "--ctx", "512")
    assert "needs at least 1024" in msg and "has 8 tokens" in msg
    msg = one_error(monkeypatch, capsys, "-m", model, "-f", str(SAMPLE), "--ctx", "100000")
    assert "100000" in msg and "8192 positions" in msg
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    assert "not UTF-8" in one_error(monkeypatch, capsys, "-m", model, "-f", str(binary))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    assert "empty" in one_error(monkeypatch, capsys, "-m", model, "-f", str(empty))
    assert "--model" in one_error(monkeypatch, capsys, "-f", str(SAMPLE))
    assert "--ctx must be at least 4" in one_error(monkeypatch, capsys, "-m", model, "-f",
                                                   str(SAMPLE), "--ctx", "2")
    msg = one_error(monkeypatch, capsys, "-m", model, "-f", str(SAMPLE), "--activations", "q4")
    assert "f32" in msg and "q8" in msg
    msg = one_error(monkeypatch, capsys, "-m", model, "-f", str(SAMPLE), "--reference", "nonesuch")
    assert "numpy" in msg
    preset = tmp_path / "p.toml"
    preset.write_text('activations = "q4"\n', encoding="utf-8")  # a preset's keys reach the command
    msg = one_error(monkeypatch, capsys, "-m", model, "-f", str(SAMPLE), "-c", str(preset))
    assert "'q4'" in msg and "q8" in msg
