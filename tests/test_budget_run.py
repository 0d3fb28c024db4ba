"""Honest memory: each run in a fresh process (``python -m edgert_core run --json``), and the OS's
peak RSS over the baseline (RSS just before the first weight is read, peak reset there) stays within
the budget, for every strategy at several budgets, on the synthetic model and on SmolLM2 (numpy
backend, fp32 math). After the run the pool holds zero bytes."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from typing import Any

import model_helpers as mh
import pytest

from edgert_core.plugins import load_registry

MIB = 1 << 20
STRATEGIES = load_registry().names("strategy")


def run_json(model: str, budget: str, strategy: str, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "edgert_core", "run", "--model", model, "--backend", "numpy",
         "--json", "--memory-budget", budget, "--strategy", strategy, *extra],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def check(report: dict[str, Any], budget_bytes: int) -> None:
    over = report["peak_rss_bytes"] - report["baseline_rss_bytes"]
    assert report["peak_scope"] == "window"
    assert over <= budget_bytes, f"{report['strategy']}: {over / MIB:.2f} MiB over baseline"
    assert report["pool_peak_bytes"] <= budget_bytes
    assert report["pool_held_bytes"] == 0 and report["pool_closed"]


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["64M", "128M"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_synthetic_model_peak_rss_within_budget(strategy: str, budget: str) -> None:
    report = run_json("synthetic-smollm2-135m", budget, strategy, "--prompt-ids", "1,2,3,4",
                      "--max-tokens", "2")
    check(report, int(budget[:-1]) * MIB)


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["64M", "128M", "256M"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_smollm2_peak_rss_within_budget(strategy: str, budget: str) -> None:
    path = str(mh.smollm2_path())
    report = run_json(path, budget, strategy, "--prompt", "The ship entered the port of",
                      "--max-tokens", "4")
    check(report, int(budget[:-1]) * MIB)
    assert report["generated_ids"] == unbudgeted_smollm2_ids()


@functools.cache
def unbudgeted_smollm2_ids() -> list[int]:
    out = subprocess.run(
        [sys.executable, "-m", "edgert_core", "run", "--model", str(mh.smollm2_path()), "--backend",
         "numpy", "--json", "--prompt", "The ship entered the port of", "--max-tokens", "4"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr
    ids: list[int] = json.loads(out.stdout.strip().splitlines()[-1])["generated_ids"]
    return ids


@pytest.mark.slow
def test_summary_line_shows_the_bounded_figure_within_the_budget() -> None:
    """Without --json a budgeted run ends with one line that puts the OS-measured peak over the
    baseline next to the budget; in a fresh process that figure stays within the budget."""
    out = subprocess.run(
        [sys.executable, "-m", "edgert_core", "run", "--model", "synthetic-smollm2-135m", "--backend",
         "numpy", "--memory-budget", "64M", "--strategy", "sequential", "--prompt-ids", "1,2,3,4",
         "--max-tokens", "2"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr
    match = re.search(r"peak over baseline ([\d.]+) (KiB|MiB) \(budget 64\.0 MiB\)", out.stderr)
    assert match, out.stderr
    over = float(match.group(1)) * (MIB if match.group(2) == "MiB" else 1024)
    assert 0 < over <= 64 * MIB
