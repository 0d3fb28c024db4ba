"""Benchmark sweeps: each (strategy, budget) configuration runs ``edge-rt run --json`` in a fresh
process, so that its peak memory, read from the OS, is its own.

The sweep always starts with a baseline row, the same backend with no budget, so that every other
row's speed is a ratio against a run made on the same machine by the same command. With
``repeat > 1`` the whole sweep runs that many rounds, configurations interleaved, so that a noisy
spell on a shared machine slows every configuration alike; each row is then the run with the median
decode speed, with the highest peak of its rounds (the budget must hold in every round). This module
runs subprocesses and turns their JSON into rows; it does no printing (the CLI does).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edgert_core.budget import MemoryBudget
from edgert_core.errors import EdgeRTError

BASELINE = "none"


@dataclass(frozen=True)
class BenchConfig:
    """One configuration: a strategy under a budget (``budget=None``: no budget, strategy auto)."""

    strategy: str
    budget: str | None

    @property
    def label(self) -> str:
        return f"{self.strategy} @ {self.budget or 'no budget'}"


@dataclass
class BenchResult:
    """One row of the table; ``error`` is set when the configuration could not run."""

    strategy: str
    budget: str | None
    budget_bytes: int | None
    backend: str = ""
    groups: int | None = None
    peak_rss_bytes: int | None = None
    baseline_rss_bytes: int | None = None
    peak_over_baseline_bytes: int | None = None
    within_budget: bool | None = None
    ms_per_token: float | None = None
    compute_ms_per_token: float | None = None
    load_ms_per_token: float | None = None
    hidden_load_fraction: float | None = None
    decode_tokens_per_s: float | None = None
    prefill_tokens_per_s: float | None = None
    speed_vs_baseline: float | None = None
    generated_ids: list[int] = field(default_factory=list)
    error: str | None = None
    runs: int = 1
    decode_tokens_per_s_runs: list[float] = field(default_factory=list)
    outputs_agree: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep_configs(budgets: Sequence[str], strategies: Sequence[str]) -> list[BenchConfig]:
    """The baseline (no budget) first, then every strategy at every budget, budgets ascending."""
    parsed = sorted(budgets, key=lambda b: MemoryBudget.parse(b).bytes)  # also validates them
    configs = [BenchConfig("auto", None)]
    configs += [BenchConfig(s, b) for b in parsed for s in strategies]
    return configs


def run_args(
    config: BenchConfig, model: str, run_options: Sequence[str], python: str = sys.executable
) -> list[str]:
    """The command line of one configuration's fresh process."""
    args = [python, "-m", "edgert_core", "run", "--model", model, "--json", "--strategy", config.strategy]
    if config.budget is not None:
        args += ["--memory-budget", config.budget]
    return args + list(run_options)


def parse_run(config: BenchConfig, returncode: int, stdout: str, stderr: str) -> BenchResult:
    """Turn one ``run --json`` process's output into a row."""
    budget_bytes = None if config.budget is None else MemoryBudget.parse(config.budget).bytes
    result = BenchResult(config.strategy, config.budget, budget_bytes)
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines:
        err = stderr.strip().splitlines()
        result.error = err[-1] if err else f"exit status {returncode}"
        return result
    try:
        data: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        result.error = "the run printed no JSON report"
        return result
    result.backend = str(data.get("backend", ""))
    result.strategy = str(data.get("strategy", config.strategy))
    result.groups = len(data.get("groups") or [])
    result.peak_rss_bytes = data.get("peak_rss_bytes")
    result.baseline_rss_bytes = data.get("baseline_rss_bytes")
    if result.peak_rss_bytes is not None and result.baseline_rss_bytes is not None:
        result.peak_over_baseline_bytes = result.peak_rss_bytes - result.baseline_rss_bytes
        if budget_bytes is not None:
            result.within_budget = result.peak_over_baseline_bytes <= budget_bytes
    tps = data.get("decode_tokens_per_s")
    result.decode_tokens_per_s = tps
    result.prefill_tokens_per_s = data.get("prefill_tokens_per_s")
    result.ms_per_token = 1000.0 / tps if tps else None
    decoded = max(int(data.get("generated_tokens") or 0) - 1, 0)
    compute = data.get("decode_compute_seconds")
    load = data.get("decode_load_seconds")
    if compute is not None and decoded:
        result.compute_ms_per_token = 1000.0 * compute / decoded
    if load is not None and decoded:
        result.load_ms_per_token = 1000.0 * load / decoded
    result.hidden_load_fraction = data.get("hidden_load_fraction")
    result.generated_ids = list(data.get("generated_ids") or [])
    return result


def run_sweep(
    configs: Sequence[BenchConfig],
    model: str,
    run_options: Sequence[str],
    *,
    repeat: int = 1,
    on_progress: Callable[[int, int, BenchConfig, BenchResult | None], None] | None = None,
    timeout: float = 1800.0,
) -> list[BenchResult]:
    """Run every configuration in its own process, ``repeat`` rounds of the whole sweep, and return
    one row per configuration (see :func:`combine`); ``on_progress(i, n, config, result)`` is called
    before (``result=None``) and after each process, ``i`` counting from 1 to ``n`` over all rounds."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    runs: list[list[BenchResult]] = [[] for _ in configs]
    total = len(configs) * repeat
    i = 0
    for _ in range(repeat):
        for k, config in enumerate(configs):
            i += 1
            if on_progress:
                on_progress(i, total, config, None)
            result = _run_one(config, model, run_options, timeout)
            runs[k].append(result)
            if on_progress:
                on_progress(i, total, config, result)
    results = [combine(r) for r in runs]
    _add_ratios(results)
    return results


def _run_one(config: BenchConfig, model: str, run_options: Sequence[str], timeout: float) -> BenchResult:
    try:
        proc = subprocess.run(
            run_args(config, model, run_options),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return BenchResult(config.strategy, config.budget, None, error=f"timed out after {timeout}s")
    return parse_run(config, proc.returncode, proc.stdout, proc.stderr)


def combine(runs: Sequence[BenchResult]) -> BenchResult:
    """One row from a configuration's rounds: the run with the median decode speed (the lower of
    the middle two for an even count), with the highest peak RSS of all rounds, ``within_budget``
    only if every round stayed within it, every round's speed, and whether all rounds generated the
    same tokens. A failed round makes the row a failure (its error)."""
    if not runs:
        raise ValueError("combine needs at least one run")
    failed = next((r for r in runs if r.error is not None), None)
    if failed is not None:
        row = replace(failed)
    else:
        ordered = sorted(runs, key=lambda r: r.decode_tokens_per_s or 0.0)
        row = replace(ordered[(len(ordered) - 1) // 2])
        worst = max(runs, key=lambda r: r.peak_over_baseline_bytes or 0)
        row.peak_rss_bytes = worst.peak_rss_bytes
        row.baseline_rss_bytes = worst.baseline_rss_bytes
        row.peak_over_baseline_bytes = worst.peak_over_baseline_bytes
        if row.budget_bytes is not None:
            row.within_budget = all(r.within_budget for r in runs)
    row.runs = len(runs)
    row.decode_tokens_per_s_runs = [r.decode_tokens_per_s or 0.0 for r in runs if r.error is None]
    row.outputs_agree = len({tuple(r.generated_ids) for r in runs if r.error is None}) <= 1
    return row


def _add_ratios(results: list[BenchResult]) -> None:
    base = next((r for r in results if r.budget is None and r.decode_tokens_per_s), None)
    if base is None or not base.decode_tokens_per_s:
        return
    for r in results:
        if r.decode_tokens_per_s:
            r.speed_vs_baseline = r.decode_tokens_per_s / base.decode_tokens_per_s


def summarize(results: Sequence[BenchResult]) -> dict[str, Any]:
    """Fastest and most memory-efficient configurations, the prefetch-vs-sequential ratio at each
    budget (of the rows' median speeds, and round by round when there are several rounds), whether
    every run stayed within its budget, and whether all outputs agree."""
    ok = [r for r in results if r.error is None and r.budget is not None]
    fastest = max(ok, key=lambda r: r.decode_tokens_per_s or 0.0, default=None)
    leanest = min(ok, key=lambda r: r.peak_over_baseline_bytes or 2**62, default=None)
    prefetch_gain: dict[str, float] = {}
    per_round: dict[str, list[float]] = {}
    for budget in dict.fromkeys(r.budget for r in ok):
        by = {r.strategy: r for r in ok if r.budget == budget}
        spec, seq = by.get("speculative-prefetch"), by.get("sequential")
        if spec and seq and spec.decode_tokens_per_s and seq.decode_tokens_per_s:
            prefetch_gain[str(budget)] = spec.decode_tokens_per_s / seq.decode_tokens_per_s
            spec_runs, seq_runs = spec.decode_tokens_per_s_runs, seq.decode_tokens_per_s_runs
            if spec.runs > 1 and len(spec_runs) == len(seq_runs):
                per_round[str(budget)] = [a / b for a, b in zip(spec_runs, seq_runs, strict=True) if b > 0]
    outputs = {tuple(r.generated_ids) for r in results if r.error is None}
    agree = all(r.outputs_agree for r in results)
    return {
        "fastest": None if fastest is None else fastest.strategy + " @ " + str(fastest.budget),
        "most_memory_efficient": None if leanest is None else leanest.strategy + " @ " + str(leanest.budget),
        "speculative_vs_sequential": prefetch_gain,
        "speculative_vs_sequential_by_round": per_round,
        "all_within_budget": all(r.within_budget for r in ok) if ok else None,
        "identical_outputs": len(outputs) <= 1 and agree,
        "rounds": max((r.runs for r in results), default=0),
        "failed": [f"{r.strategy} @ {r.budget}: {r.error}" for r in results if r.error],
    }


CSV_FIELDS = [
    "strategy",
    "budget",
    "budget_bytes",
    "backend",
    "groups",
    "peak_rss_bytes",
    "baseline_rss_bytes",
    "peak_over_baseline_bytes",
    "within_budget",
    "ms_per_token",
    "compute_ms_per_token",
    "load_ms_per_token",
    "hidden_load_fraction",
    "decode_tokens_per_s",
    "prefill_tokens_per_s",
    "speed_vs_baseline",
    "runs",
    "error",
]


def to_csv(results: Sequence[BenchResult]) -> str:
    """The table as CSV text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in results:
        writer.writerow(r.as_dict())
    return buf.getvalue()


PLOT_EXTRA_HINT = "pip install 'edgert-core[plot]'"


def check_plotting() -> None:
    """Raise :class:`EdgeRTError` naming the extra to install when matplotlib cannot be imported, so
    that ``benchmark --plot`` can say so before the sweep rather than after it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EdgeRTError(
            f"--plot needs matplotlib, which is not installed: {PLOT_EXTRA_HINT} "
            "(or pip install matplotlib), or leave out --plot."
        ) from None


def plot(results: Sequence[BenchResult], path: str) -> None:
    """Decode tok/s against budget, one line per strategy, written to ``path`` (PNG)."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    strategies = dict.fromkeys(r.strategy for r in results if r.budget is not None)
    for strategy in strategies:
        pts = sorted(
            (r.budget_bytes / 2**20, r.decode_tokens_per_s)
            for r in results
            if r.strategy == strategy and r.budget_bytes and r.decode_tokens_per_s
        )
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=strategy)
    base = next((r for r in results if r.budget is None and r.decode_tokens_per_s), None)
    if base is not None and base.decode_tokens_per_s:
        ax.axhline(base.decode_tokens_per_s, linestyle="--", color="grey", label="no budget")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("memory budget (MiB)")
    ax.set_ylabel("decode tokens/s")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise EdgeRTError(f"Could not write the plot to {path}: {exc.strerror or exc}.") from None
    finally:
        plt.close(fig)
