"""``Model.fit_context`` and ``edge-rt run``: one generation's KV cache is sized for its prompt and
``max_tokens``, not ``--max-context``, so under a budget the bytes of positions no token reaches go
to weights (issue 17: at a 160 MiB cgroup limit, SmolLM2 then fits resident)."""

from __future__ import annotations

import json
from pathlib import Path

import model_helpers as mh
import pytest

from edgert_core.api import Model, load_model

PROMPT = [5, 6, 7, 8]
MAX_TOKENS = 6
POSITIONS = len(PROMPT) + MAX_TOKENS
#: the context asked for: small enough that the tiny model's budgets in between stay feasible (at 512
#: its KV cache alone is most of the bytes)
ASKED = 96


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mh.write_gguf(mh.fixture("tiny_llama"), tmp_path_factory.mktemp("fit") / "t.gguf", "Q8_0")


def _kv_bytes_per_position(m: Model) -> int:
    d = m.source.config.dims
    return 2 * d.n_layers * d.n_kv_heads * d.head_dim * 4  # K and V, f32


def _between_budget(path: Path) -> int:
    """A budget too small for every weight resident beside a cache of :data:`ASKED` positions and
    enough beside one of :data:`POSITIONS`."""
    whole = load_model(path, backend="numpy", max_context=ASKED, notify=None)
    full_peak = whole.plan.predicted_peak_bytes
    per_position = _kv_bytes_per_position(whole)
    assert whole.fit_context(POSITIONS)
    fitted_peak = whole.plan.predicted_peak_bytes
    # the cache's bytes for the positions no token reaches are off the plan, at least
    assert full_peak - fitted_peak >= (ASKED - POSITIONS) * per_position
    return (full_peak + fitted_peak) // 2


def test_fit_context_gives_the_cache_s_unreached_positions_to_weights(gguf: Path) -> None:
    budget = _between_budget(gguf)
    reference = load_model(gguf, backend="numpy", max_context=ASKED, notify=None)
    expected = reference.generate(PROMPT, max_tokens=MAX_TOKENS).result().ids

    m = load_model(gguf, backend="numpy", memory_budget=budget, max_context=ASKED, notify=None)
    assert not all(g.resident for g in m.plan.groups)  # a full-size cache leaves weights streamed
    assert m.fit_context(POSITIONS)
    assert m.context.max_context == POSITIONS and m.requested_max_context == ASKED
    assert m.context.budget_bytes == budget and all(g.resident for g in m.plan.groups)
    gen = m.generate(PROMPT, max_tokens=MAX_TOKENS)
    assert gen.result().ids == expected and gen.stats.stop_reason == "max_tokens"
    assert m.engine.cache.max_context == POSITIONS
    m.close()


def test_fit_context_changes_nothing_it_should_not(gguf: Path) -> None:
    m = load_model(gguf, backend="numpy", max_context=16, notify=None)
    plan = m.plan
    assert not m.fit_context(16) and not m.fit_context(40)  # never grows, never a no-op re-plan
    assert m.plan is plan and m.context.max_context == 16
    m.generate(PROMPT, max_tokens=2).result()
    assert not m.fit_context(8)  # the engine is prepared: its cache stays as it is
    assert m.context.max_context == 16 and m.engine.cache.max_context == 16
    m.close()


def test_run_reports_the_context_asked_and_the_positions_cached(
    gguf: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    budget = _between_budget(gguf)
    ids = ",".join(str(i) for i in PROMPT)
    reports = []
    for extra in ([], ["--memory-budget", str(budget)]):
        code, out, err = mh.run_cli(["run", "--model", str(gguf), "--backend", "numpy",
                                     "--prompt-ids", ids, "-n", str(MAX_TOKENS), "--max-context",
                                     str(ASKED), "--json", *extra],
                                    monkeypatch, capsys)
        assert code == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for r in reports:
        assert r["max_context"] == ASKED and r["kv_positions"] == POSITIONS
        assert r["stop_reason"] == "max_tokens"
    assert reports[1]["budget_bytes"] == budget and all(reports[1]["resident_groups"])
    assert reports[0]["generated_ids"] == reports[1]["generated_ids"]
