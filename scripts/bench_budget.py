"""Budgeted runs of SmolLM2 per backend, strategy and budget, each in a fresh process, in interleaved
rounds (so a noisy machine slows every configuration alike); prints medians and ratios.

Run: ``python scripts/bench_budget.py [--backend numpy] [--budgets 64M,128M,256M,1G] [--tokens 24]
[--rounds 1]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

PROMPT = "The ship entered the port of"
STRATEGIES = ("sequential", "greedy-grouping", "speculative-prefetch")


def run(backend: str, budget: str | None, strategy: str, tokens: int) -> dict[str, Any]:
    args = [sys.executable, "-m", "edgert_core", "run", "--model", "smollm2", "--backend", backend,
            "--prompt", PROMPT, "--max-tokens", str(tokens), "--json", "--strategy", strategy]
    if budget is not None:
        args += ["--memory-budget", budget]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1]}
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--budgets", default="64M,128M,256M,1G")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    configs: list[tuple[str | None, str]] = [(None, "auto")]
    configs += [(b, s) for b in a.budgets.split(",") for s in STRATEGIES]
    results: dict[tuple[str | None, str], list[dict[str, Any]]] = {c: [] for c in configs}
    for _ in range(a.rounds):
        for budget, strategy in configs:
            results[(budget, strategy)].append(run(a.backend, budget, strategy, a.tokens))

    def tps(budget: str | None, strategy: str) -> float | None:
        vals = [r["decode_tokens_per_s"] for r in results[(budget, strategy)] if "error" not in r]
        return statistics.median(vals) if vals else None

    base = tps(None, "auto")
    print(f"backend {a.backend}, no budget: {base:.2f} tok/s" if base else "no baseline")
    print(f"{'budget':>6} {'strategy':22} {'over MiB':>9} {'budget':>7} {'tok/s':>6} {'x none':>6} "
          f"{'x seq':>6} {'hidden':>6} source")
    for budget, strategy in configs[1:]:
        r = results[(budget, strategy)][-1]
        if "error" in r:
            print(f"{budget:>6} {strategy:22} error: {r['error']}")
            continue
        over = (r["peak_rss_bytes"] - r["baseline_rss_bytes"]) / 2**20
        t = tps(budget, strategy) or 0.0
        seq = tps(budget, "sequential")
        hidden = r["hidden_load_fraction"]
        print(f"{budget:>6} {r['strategy']:22} {over:9.1f} {r['budget_bytes'] / 2**20:7.0f} {t:6.2f} "
              f"{t / base if base else 0:6.2f} {t / seq if seq else 0:6.2f} "
              f"{'-' if hidden is None else f'{hidden:.2f}':>6} {r['weight_source']}")


if __name__ == "__main__":
    main()
