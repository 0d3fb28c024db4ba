"""Watch the runtime adapt while it generates, on a fake Raspberry Pi 4 (issue 15's demonstration).

The monitors are pointed at a copy of ``tests/fixtures/pi4`` (``EDGERT_PROCFS_ROOT`` and
``EDGERT_SYSFS_ROOT``); a file of the copy is rewritten right after a given token, and the script
prints the governor's events, this process's RSS from the OS (``VmRSS`` of ``/proc/self/status``)
around them, and whether the greedy tokens equal an undisturbed run's (``governor="none"``, run
first, in this same process).

    python scripts/adaptive_demo.py memory [--model smollm2] [--backend neon] [--tokens 300]
        [--at 20] [--back 60] [--rule calm_s=5]
    python scripts/adaptive_demo.py heat [--tokens 300] [--at 20] [--back 120] [--rule heat_step_s=2]

``memory``: MemAvailable falls to 100 MiB after token ``--at`` and comes back to 3000 MiB after
token ``--back``. ``heat``: the SoC's temperature goes to 85 °C after ``--at`` and back to 60 °C
after ``--back``. ``--rule NAME=VALUE`` changes one of the built-in governor's rules (default: its
own). ``--json`` prints one JSON object instead of the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PI4 = ROOT / "tests" / "fixtures" / "pi4"
MIB = 1 << 20
PROMPT = "Once upon a time, in a small village by the sea, there lived"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("this demo reads VmRSS from /proc/self/status (Linux)")


def set_mem_available(tree: Path, nbytes: int) -> None:
    path = tree / "proc" / "meminfo"
    path.write_text(re.sub(r"^MemAvailable:\s+\d+ kB$", f"MemAvailable:   {nbytes // 1024} kB",
                           path.read_text(), flags=re.M))


def set_temperature(tree: Path, celsius: float) -> None:
    (tree / "sys" / "class" / "thermal" / "thermal_zone0" / "temp").write_text(
        f"{int(celsius * 1000)}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("scenario", choices=["memory", "heat"])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--backend", default="neon")
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--max-context", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--at", type=int, default=20, help="the change comes after this token")
    ap.add_argument("--back", type=int, default=None, help="and is undone after this one")
    ap.add_argument("--rule", action="append", default=[], help="NAME=VALUE of the governor")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rules = {k: float(v) for k, v in (r.split("=", 1) for r in args.rule)}
    back = args.back if args.back is not None else args.tokens // 2

    with tempfile.TemporaryDirectory(prefix="edgert-pi4-") as tmp:
        tree = Path(tmp) / "pi4"
        shutil.copytree(PI4, tree)
        import os

        os.environ["EDGERT_PROCFS_ROOT"] = str(tree / "proc")
        os.environ["EDGERT_SYSFS_ROOT"] = str(tree / "sys")
        from edgert_core.api import load_model
        from edgert_core.builtin_governor import AdaptiveGovernor

        def load(governor: str) -> Any:
            return load_model(args.model, backend=args.backend, max_context=args.max_context,
                              threads=args.threads, governor=governor, tune_process=True,
                              notify=lambda m: print(m, file=sys.stderr, flush=True))

        with load("none") as plain:
            reference = plain.generate(PROMPT, max_tokens=args.tokens).result().ids

        if args.scenario == "memory":
            change = (lambda: set_mem_available(tree, 100 * MIB), "MemAvailable -> 100 MiB")
            undo = (lambda: set_mem_available(tree, 3000 * MIB), "MemAvailable -> 3000 MiB")
        else:
            change = (lambda: set_temperature(tree, 85.0), "temperature -> 85 °C")
            undo = (lambda: set_temperature(tree, 60.0), "temperature -> 60 °C")
        model = load("adaptive")
        model.governor = AdaptiveGovernor(**rules)
        threads0 = getattr(model.backend, "threads", None)
        gen = model.generate(PROMPT, max_tokens=args.tokens)
        rss: list[int] = []
        times: list[float] = []
        marks: dict[int, str] = {}
        t0 = time.perf_counter()
        for token in gen:
            if token.id < 0:
                continue
            n = len(gen.ids)
            rss.append(rss_bytes())
            times.append(time.perf_counter() - t0)
            if n == args.at:
                change[0]()
                marks[n] = change[1]
            elif n == back:
                undo[0]()
                marks[n] = undo[1]
        model.close()

    events = [e.as_dict() for e in gen.events]
    result = {
        "scenario": args.scenario, "model": model.name, "backend": model.backend.name,
        "tokens": len(gen.ids), "same_tokens_as_undisturbed": gen.ids == reference,
        "start_budget_bytes": model.start_budget_bytes,
        "minimum_budget_bytes": model.minimum_budget_bytes, "start_threads": threads0,
        "changes": marks, "events": events,
        "rss_bytes_by_token": {i + 1: r for i, r in enumerate(rss)},
        "seconds_by_token": {i + 1: round(t, 4) for i, t in enumerate(times)},
        "governor_seconds": gen.adaptive.govern_seconds if gen.adaptive else None,
        "governor_steps": gen.adaptive.governs if gen.adaptive else None,
        "monitor_reads": gen.adaptive.sampler.reads if gen.adaptive else None,
        "monitor_read_seconds": gen.adaptive.sampler.read_seconds if gen.adaptive else None,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.scenario}: {result['tokens']} tokens of {model.name} on {model.backend.name}; "
          f"same tokens as the undisturbed run: {result['same_tokens_as_undisturbed']}")
    for n, what in marks.items():
        print(f"  after token {n}: {what}")
    if gen.adaptive is not None and gen.adaptive.governs:
        a = gen.adaptive
        print(f"  governing: {a.governs} steps, {a.sampler.reads} monitor reads "
              f"({1e3 * a.sampler.read_seconds / max(a.sampler.reads, 1):.2f} ms each), "
              f"{1e6 * a.govern_seconds / a.governs:.0f} us a step on average")
    for e in events:
        i = int(e["token_index"])
        before = rss[i - 1] if i >= 1 else None
        after = rss[min(i + 2, len(rss) - 1)]
        b = "-" if before is None else f"{before / MIB:.1f}"
        budget = "none" if e["budget_bytes"] is None else f"{int(e['budget_bytes']) / MIB:.1f} MiB"
        print(f"  before token {i + 1}: {e['kind']:<7} budget {budget:>11}, threads "
              f"{e['threads']}; RSS {b} MiB at token {i} -> {after / MIB:.1f} MiB at token "
              f"{min(i + 3, len(rss))}; {e['reason']}")
    n = len(times)
    changed = (int(e["token_index"]) for e in events if 1 <= int(e["token_index"]) < n)
    cuts = sorted({1, n, *marks, *changed})
    spans = []
    for a, b in itertools.pairwise(cuts):  # tokens a..b: b - a gaps in times[b-1] - times[a-1] s
        if times[b - 1] > times[a - 1]:
            spans.append(f"{a}-{b}: {(b - a) / (times[b - 1] - times[a - 1]):.1f}")
    print("  tok/s by stretch (tokens a-b): " + ", ".join(spans))

if __name__ == "__main__":
    main()
