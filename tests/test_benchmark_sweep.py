"""The benchmark's bookkeeping: configurations, parsing a run's JSON, ratios and the summary."""

from __future__ import annotations

import json

import pytest

from edgert_core.benchmark import (
    BenchConfig,
    _add_ratios,
    parse_run,
    run_args,
    summarize,
    sweep_configs,
    to_csv,
)
from edgert_core.errors import BudgetError


def _report(
    tps: float, peak: int, base: int, ids: list[int], groups: int = 3, strategy: str = "sequential"
) -> str:
    return "streamed text\n" + json.dumps(
        {
            "backend": "numpy",
            "strategy": strategy,
            "groups": [[i] for i in range(groups)],
            "peak_rss_bytes": peak,
            "baseline_rss_bytes": base,
            "decode_tokens_per_s": tps,
            "prefill_tokens_per_s": 100.0,
            "generated_tokens": 11,
            "decode_compute_seconds": 0.5,
            "decode_load_seconds": 0.25,
            "hidden_load_fraction": 0.4,
            "generated_ids": ids,
        }
    )


def test_sweep_starts_with_baseline_and_sorts_budgets() -> None:
    configs = sweep_configs(["1G", "64M", "128M"], ["sequential", "greedy-grouping"])
    assert configs[0] == BenchConfig("auto", None)
    assert [c.budget for c in configs[1:]] == ["64M", "64M", "128M", "128M", "1G", "1G"]


def test_bad_budget_in_sweep_is_a_clear_error() -> None:
    with pytest.raises(BudgetError):
        sweep_configs(["64M", "lots"], ["sequential"])


def test_run_args_pass_budget_and_json() -> None:
    args = run_args(BenchConfig("sequential", "64M"), "smollm2", ["--max-tokens", "4"], python="py")
    assert args[:4] == ["py", "-m", "edgert_core", "run"]
    assert "--json" in args and args[args.index("--memory-budget") + 1] == "64M"
    assert "--memory-budget" not in run_args(BenchConfig("auto", None), "m", [], python="py")


def test_parse_run_reads_last_json_line_and_checks_budget() -> None:
    cfg = BenchConfig("sequential", "64M")
    r = parse_run(cfg, 0, _report(20.0, 100 * 2**20, 30 * 2**20, [1, 2]), "")
    assert r.error is None
    assert r.groups == 3
    assert r.peak_over_baseline_bytes == 70 * 2**20
    assert r.within_budget is False  # 70 MiB over a 64 MiB budget
    assert r.ms_per_token == pytest.approx(50.0)
    assert r.compute_ms_per_token == pytest.approx(50.0)  # 0.5 s over 10 decode steps
    assert r.load_ms_per_token == pytest.approx(25.0)


def test_parse_run_failure_keeps_last_stderr_line() -> None:
    r = parse_run(BenchConfig("sequential", "1M"), 2, "", "error: A memory budget of 1.0 MiB is too small")
    assert r.error is not None and "too small" in r.error


def test_ratios_and_summary() -> None:
    base = parse_run(BenchConfig("auto", None), 0, _report(40.0, 600 * 2**20, 30 * 2**20, [5]), "")
    seq = parse_run(BenchConfig("sequential", "128M"), 0, _report(10.0, 100 * 2**20, 30 * 2**20, [5]), "")
    spec = parse_run(
        BenchConfig("speculative-prefetch", "128M"),
        0,
        _report(15.0, 120 * 2**20, 30 * 2**20, [5], strategy="speculative-prefetch"),
        "",
    )
    rows = [base, seq, spec]
    _add_ratios(rows)
    assert seq.speed_vs_baseline == pytest.approx(0.25)
    summary = summarize(rows)
    assert summary["speculative_vs_sequential"] == {"128M": pytest.approx(1.5)}
    assert summary["fastest"] == "speculative-prefetch @ 128M"
    assert summary["most_memory_efficient"] == "sequential @ 128M"
    assert summary["all_within_budget"] is True
    assert summary["identical_outputs"] is True
    spec.generated_ids = [6]
    assert summarize(rows)["identical_outputs"] is False
    assert to_csv(rows).splitlines()[0].startswith("strategy,budget,budget_bytes")
