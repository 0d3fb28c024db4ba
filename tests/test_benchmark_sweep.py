"""The benchmark's bookkeeping: configurations, parsing a run's JSON, ratios and the summary."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import model_helpers as mh
import pytest

from edgert_core.benchmark import (
    BenchConfig,
    BenchResult,
    _add_ratios,
    combine,
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


def _run(tps: float, over_mib: int, ids: list[int], budget: str = "128M",
         strategy: str = "sequential") -> BenchResult:
    return parse_run(BenchConfig(strategy, budget), 0,
                     _report(tps, (30 + over_mib) * 2**20, 30 * 2**20, ids, strategy=strategy), "")


def test_combine_takes_the_median_run_and_the_worst_peak() -> None:
    runs = [_run(9.0, 60, [1]), _run(12.0, 70, [1]), _run(10.0, 130, [1])]
    row = combine(runs)
    assert row.decode_tokens_per_s == 10.0  # the median run's speed, not the mean or the best
    assert row.peak_over_baseline_bytes == 130 * 2**20  # the highest peak of the three rounds
    assert row.within_budget is False  # one round went over 128 MiB
    assert row.runs == 3 and row.decode_tokens_per_s_runs == [9.0, 12.0, 10.0]
    assert row.outputs_agree is True
    two = combine([_run(8.0, 10, [1]), _run(12.0, 20, [2])])
    assert two.decode_tokens_per_s == 8.0  # the lower of the middle two
    assert two.outputs_agree is False
    assert two.within_budget is True


def test_combine_a_failed_round_fails_the_row() -> None:
    bad = parse_run(BenchConfig("sequential", "128M"), 2, "", "error: out of memory")
    row = combine([_run(9.0, 60, [1]), bad])
    assert row.error is not None and "out of memory" in row.error


def test_summary_ratios_round_by_round() -> None:
    seq = combine([_run(10.0, 20, [5]), _run(8.0, 20, [5])])
    spec = combine([_run(13.0, 90, [5], strategy="speculative-prefetch"),
                    _run(12.0, 90, [5], strategy="speculative-prefetch")])
    summary = summarize([seq, spec])
    assert summary["speculative_vs_sequential"] == {"128M": pytest.approx(12.0 / 8.0)}
    assert summary["speculative_vs_sequential_by_round"] == {
        "128M": [pytest.approx(1.3), pytest.approx(1.5)]
    }
    assert summary["rounds"] == 2


def test_benchmark_command_end_to_end(tmp_path: Path) -> None:
    """``edge-rt benchmark`` on a tiny model: every configuration runs in its own process, twice;
    the JSON rows carry OS-measured peaks; the CSV has one line per configuration."""
    out_csv = tmp_path / "sweep.csv"
    cmd = [sys.executable, "-m", "edgert_core", "benchmark", "--model", str(mh.fixture("tiny_llama")),
           "--backend", "numpy", "--sweep-memory", "3M,8M", "--strategies", "sequential,speculative-prefetch",
           "--max-tokens", "4", "--max-context", "64", "--repeat", "2", "--json", "--csv", str(out_csv)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = data["rows"]
    assert [(r["strategy"], r["budget"]) for r in rows] == [
        ("resident", None), ("sequential", "3M"), ("speculative-prefetch", "3M"),
        ("sequential", "8M"), ("speculative-prefetch", "8M"),
    ]
    for row in rows:
        assert row["error"] is None and row["runs"] == 2
        assert len(row["decode_tokens_per_s_runs"]) == 2
        assert row["peak_rss_bytes"] > row["baseline_rss_bytes"] > 0
        if row["budget"] is not None:
            assert row["within_budget"] is True
    assert data["summary"]["identical_outputs"] is True
    assert data["summary"]["rounds"] == 2
    assert set(data["summary"]["speculative_vs_sequential_by_round"]) == {"3M", "8M"}
    assert "[10/10]" in proc.stderr  # progress counts every process of both rounds
    table = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(table) == 5 and table[1]["strategy"] == "sequential" and table[1]["runs"] == "2"


def test_benchmark_repeat_zero_in_a_preset_is_one_clear_error(tmp_path: Path) -> None:
    preset = tmp_path / "bench.toml"
    preset.write_text("repeat = 0\n")
    proc = subprocess.run([sys.executable, "-m", "edgert_core", "benchmark", "-c", str(preset)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"repeat in {preset} must be at least 1" in proc.stderr  # named as the preset has it
