"""Issue 17's table: edge-rt and llama.cpp under a real memory limit, page cache counted.

For each memory limit (default: none, 160M, 128M) this runs the sweep of ``edge-rt benchmark
--memory-limit LIMIT``: the no-budget baseline, each strategy at each ``--memory-budget`` value it
tries (default auto, 32M and 64M), and llama.cpp on the same GGUF file when llama-cpp-python is installed,
each configuration in a fresh process in its own fresh memory cgroup of that limit (no swap), after
the model file's cached pages were dropped (no cgroup and no drop for the ``none`` limit). It prints
one table of every row, then one line per limit with llama.cpp and edge-rt's best budget, in the
shape of the issue's table.

Run (as root; cgroup v1 or v2 with a writable memory controller):

    .venv/bin/python scripts/bench_memory_limit.py [--model smollm2] [--limits none,160M,128M]
        [--budgets auto,32M,64M] [--strategies speculative-prefetch] [--max-tokens 64] [--threads N]
        [--backend NAME] [--no-llama-cpp] [--repeat 1] [--json]

Columns: ``tok/s`` decode tokens per second; ``peak RSS`` the process's ``VmHWM`` (it counts shared
library pages that the limit charges to the parent's cgroup, so it can exceed ``cgroup peak``);
``base RSS`` the RSS before any weight (edge-rt: after the tokenizer and plan; llama.cpp: after
importing llama-cpp-python); ``base held`` what the row's cgroup held at that point beyond its
droppable page cache (edge-rt rows: anonymous memory and mapped files, the baseline the limit really
counts; shared library pages the parent's cgroup read first are not in it); ``cgroup peak`` what the
cgroup counted at most (RSS it was charged for plus page cache); ``read/tok`` bytes read from disk
per decoded token (``/proc/self/io`` ``read_bytes``); ``disk MiB/s`` the bandwidth that implies at
that speed; ``disk bound`` the tok/s that the model file's read bandwidth (measured before each
limit's sweep, the faster cache-free read mode's, ``edgert_core.memory.bandwidth``) allows for the
row's bytes read per token, and ``x bound`` the row's speed as a fraction of it (rows reading under
1 MiB a token have none); ``failcnt`` how often usage
hit the limit (the kernel's count; some kernels leave it at 0). A note says when pages of the model
file stayed in the page cache after the drop (another process maps the file): those reads neither
reach the disk nor count against the row's cgroup, so that row flatters the engine.

The issue's F32 rows (SmolLM2 at 515 MB, numpy backend, 384M and 256M limits) need an F32 file,
which ``edge-rt pull`` does not ship: make one from the pulled Q4_1 file with
``scripts/make_f32_gguf.py OUT.gguf`` and give ``--model OUT.gguf --limits 384M,256M --budgets
auto,128M --backend numpy``.

Each limit's sweep takes about a minute on a free 2-core machine at 64 tokens (thrashing rows take
longer); the machine should be otherwise idle, since every row is a speed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edgert_core.api import open_source
from edgert_core.benchmark import (
    LLAMA_CPP,
    LLAMA_CPP_CONFIG,
    BenchConfig,
    BenchResult,
    LlamaCppSettings,
    check_llama_cpp,
    check_memory_limit,
    run_command_options,
    run_sweep,
    sweep_configs,
)
from edgert_core.budget import MemoryBudget, format_bytes
from edgert_core.cli.tables import Justify, add_row, echo_table, make_table
from edgert_core.errors import EdgeRTError
from edgert_core.weight_cache import prepared_files_of

PROMPT = "The ship entered the port of"
MiB = 2**20
COLUMNS: list[tuple[str, Justify]] = [
    ("limit", "right"), ("engine", "left"), ("budget", "right"), ("tok/s", "right"),
    ("prompt tok/s", "right"), ("peak RSS", "right"), ("base RSS", "right"), ("base held", "right"),
    ("cgroup peak", "right"), ("read/tok", "right"), ("disk MiB/s", "right"), ("disk bound", "right"),
    ("x bound", "right"), ("failcnt", "right"),
    ("note", "left"),
]


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _size(value: float | None) -> str:
    return "-" if value is None else format_bytes(int(value))


def _num(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _engine(r: BenchResult) -> str:
    if r.engine == LLAMA_CPP:
        return "llama.cpp (mmap)"
    return " ".join(part for part in ("edge-rt", r.backend, r.strategy) if part)


def _note(r: BenchResult) -> str:
    notes = [r.error or ("" if r.within_budget in (None, True) else "over budget")]
    if (r.cached_at_start_bytes or 0) > MiB:  # another process maps the file: its pages stay cached
        notes.append(f"{_size(r.cached_at_start_bytes)} of the file stayed cached after the drop")
    return "; ".join(n for n in notes if n)


def measure(args: argparse.Namespace) -> list[tuple[str, list[BenchResult]]]:
    """Every limit's rows, in the order of ``--limits``."""
    source = open_source(args.model)
    files = sorted(source.file_sizes()) if source.format != "synthetic" else []
    source.close()
    llama: LlamaCppSettings | None = None
    if not args.no_llama_cpp:
        try:
            check_llama_cpp(source.format, source.path)
            llama = LlamaCppSettings(source.path, args.prompt, args.max_tokens, args.max_context,
                                     args.threads)
        except EdgeRTError as exc:
            print(f"(no llama.cpp rows: {exc})", file=sys.stderr)
    options = run_command_options(prompt=args.prompt, max_tokens=args.max_tokens,
                                  max_context=args.max_context, backend=args.backend,
                                  threads=args.threads)
    out = []
    for limit_text in _split(args.limits):
        limit = None if limit_text.lower() == "none" else MemoryBudget.parse(limit_text).bytes
        if limit is not None:
            check_memory_limit(limit)
        configs: list[BenchConfig] = sweep_configs(_split(args.budgets), _split(args.strategies))
        if llama is not None:
            configs.append(LLAMA_CPP_CONFIG)

        def progress(i: int, n: int, cfg: BenchConfig, result: BenchResult | None,
                     where: str = limit_text) -> None:
            if result is not None:
                done = f"failed: {result.error}" if result.error else (
                    f"{result.decode_tokens_per_s or 0:.1f} tok/s")
                print(f"[limit {where} {i}/{n}] {cfg.label}: {done}", file=sys.stderr, flush=True)

        drop = [*files, *prepared_files_of(files)] if limit is not None else []
        rows = run_sweep(configs, args.model, options, repeat=args.repeat, on_progress=progress,
                         memory_limit=limit, drop_files=drop, llama_cpp=llama)
        out.append((limit_text, rows))
    return out


def best_lines(measured: list[tuple[str, list[BenchResult]]]) -> list[str]:
    """Per limit: llama.cpp's speed and peak, and edge-rt's fastest budgeted row."""
    lines = []
    for limit, rows in measured:
        ok = [r for r in rows if r.error is None]
        llama = next((r for r in ok if r.engine == LLAMA_CPP), None)
        ours = [r for r in ok if r.engine != LLAMA_CPP and r.budget is not None]
        best = max(ours, key=lambda r: r.decode_tokens_per_s or 0.0, default=None)
        base = next((r for r in rows if r.engine != LLAMA_CPP and r.budget is None), None)
        parts = [f"limit {limit}:"]
        if llama is not None:
            parts.append(f"llama.cpp {_num(llama.decode_tokens_per_s)} tok/s, "
                         f"{_size(llama.peak_rss_bytes)} peak;")
        if base is not None:
            parts.append(f"edge-rt no budget {'failed' if base.error else _num(base.decode_tokens_per_s)}"
                         + ("" if base.error else " tok/s") + ";")
        if best is not None:
            parts.append(f"edge-rt best {best.strategy} {_num(best.decode_tokens_per_s)} tok/s at "
                         f"{best.budget}, {_size(best.peak_rss_bytes)} peak (baseline "
                         f"{_size(best.baseline_rss_bytes)});")
        outputs = [r.generated_ids for r in ok if r.engine != LLAMA_CPP]
        if outputs:
            same = all(ids == outputs[0] for ids in outputs)
            parts.append(f"edge-rt rows generated the same tokens: {same}")
        lines.append(" ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--limits", default="none,160M,128M", help="Comma list; none: no cgroup.")
    parser.add_argument("--budgets", default="auto,32M,64M", help="edge-rt --memory-budget values.")
    parser.add_argument("--strategies", default="speculative-prefetch")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-context", type=int, default=512)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument("--json", action="store_true", help="Print the rows as one JSON object.")
    args = parser.parse_args(argv)
    try:
        measured = measure(args)
    except EdgeRTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data: dict[str, Any] = {limit: [r.as_dict() for r in rows] for limit, rows in measured}
        print(json.dumps({"limits": data, "best": best_lines(measured)}))
        return 0
    table = make_table(COLUMNS)
    for limit, rows in measured:
        for r in rows:
            add_row(table, [
                limit, _engine(r), r.budget or "none", _num(r.decode_tokens_per_s),
                _num(r.prefill_tokens_per_s), _size(r.peak_rss_bytes), _size(r.baseline_rss_bytes),
                _size(r.baseline_held_bytes),
                _size(r.cgroup_peak_bytes), _size(r.read_bytes_per_token), _num(r.disk_mib_per_s),
                _num(r.disk_bound_tokens_per_s), _num(r.of_disk_bound, ".2f"),
                "-" if r.failcnt is None else str(r.failcnt), _note(r),
            ])
    echo_table(table)
    print()
    for line in best_lines(measured):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
