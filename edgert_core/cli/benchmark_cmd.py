"""``edge-rt benchmark``: sweep memory budgets and strategies, each run in a fresh process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edgert_core.api import open_source
from edgert_core.benchmark import (
    LLAMA_CPP_CONFIG,
    BenchConfig,
    BenchResult,
    LlamaCppSettings,
    check_llama_cpp,
    check_memory_limit,
    check_plotting,
    plot,
    run_command_options,
    run_sweep,
    summarize,
    sweep_configs,
    to_csv,
)
from edgert_core.budget import MemoryBudget, format_bytes
from edgert_core.cli.app import (
    ActivationsOption,
    ConfigOption,
    GovernorOption,
    KVCacheOption,
    SoftTempOption,
    app,
    apply_preset,
    print_json,
    require_at_least,
    warn_threads,
)
from edgert_core.cli.tables import Justify, add_row, echo_table, make_table
from edgert_core.cluster.pipeline import parse_local, require_dask
from edgert_core.errors import BudgetError, ConfigError, EdgeRTError
from edgert_core.models.kv_quant import check_mode
from edgert_core.plan import DEFAULT_MAX_CONTEXT
from edgert_core.weight_cache import prepared_files_of

DEFAULT_SWEEP = "64M,128M,256M,1G"
DEFAULT_STRATEGIES = "sequential,greedy-grouping,speculative-prefetch"


def _split(value: str | list[str]) -> list[str]:
    if isinstance(value, list):
        return value
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command("benchmark")
def benchmark_command(
    ctx: typer.Context,
    model: str = typer.Option("smollm2", "--model", "-m", help="Model to benchmark (as for run)."),
    sweep_memory: str = typer.Option(
        DEFAULT_SWEEP, "--sweep-memory", help="Comma list of budgets; a no-budget baseline runs too."
    ),
    strategies: str = typer.Option(DEFAULT_STRATEGIES, "--strategies", help="Comma list of strategies."),
    backend: str | None = typer.Option(None, "--backend", help="Kernel backend; none: the best installed."),
    max_tokens: int = typer.Option(32, "--max-tokens", "-n", help="Tokens generated per configuration."),
    prompt: str = typer.Option(
        "The ship entered the port of", "--prompt", "-p", help="Prompt for every configuration."
    ),
    max_context: int = typer.Option(
        DEFAULT_MAX_CONTEXT, "--max-context", help="Tokens of context (sizes the KV cache)."
    ),
    threads: int | None = typer.Option(None, "--threads", help="Compute threads; none: backend default."),
    activations: str | None = ActivationsOption,
    kv_cache: str = KVCacheOption,
    governor: str = GovernorOption,
    soft_temp_limit: float | None = SoftTempOption,
    repeat: int = typer.Option(
        1, "--repeat", "-r", min=1,
        help="Rounds of the whole sweep, interleaved; each row is its median run (for noisy machines).",
    ),
    memory_limit: str | None = typer.Option(
        None, "--memory-limit",
        help="Run every configuration in a fresh memory cgroup of this size (page cache counted, no "
        "swap), after dropping the model file's cached pages, e.g. 160M; needs root.",
    ),
    llama_cpp: bool = typer.Option(
        False, "--llama-cpp", help="Add a llama.cpp row on the same GGUF file (needs llama-cpp-python)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print rows and summary as one JSON object."),
    csv_path: Path | None = typer.Option(None, "--csv", help="Also write the table to this CSV file."),
    plot_path: Path | None = typer.Option(
        None, "--plot", help="Also plot tok/s against budget to this PNG (needs matplotlib: "
        "pip install 'edgert-core\\[plot]')."
    ),
    cluster: str | None = typer.Option(
        None, "--cluster",
        help="Comma list of Dask clusters (local:N or a scheduler address) to run every "
        "configuration on after the one-process baseline; the budgets become each worker's.",
    ),
    config: Path | None = ConfigOption,
) -> None:
    """Measure decode speed and OS-measured peak memory for each strategy at each budget."""
    values = apply_preset(
        ctx,
        config,
        {
            "model": model,
            "sweep_memory": sweep_memory,
            "strategies": strategies,
            "backend": backend,
            "max_tokens": max_tokens,
            "prompt": prompt,
            "max_context": max_context,
            "threads": threads,
            "activations": activations,
            "kv_cache": kv_cache,
            "governor": governor,
            "soft_temp_limit": soft_temp_limit,
            "repeat": repeat,
            "memory_limit": memory_limit,
            "llama_cpp": llama_cpp,
            "cluster": cluster,
        },
    )
    for key, minimum in (("repeat", 1), ("max_tokens", 1), ("max_context", 2), ("threads", 1)):
        require_at_least(ctx, config, values, key, minimum)
    warn_threads(ctx, config, values["threads"])
    # Everything the steps after the sweep need is checked before it: a sweep takes minutes.
    if plot_path is not None:
        check_plotting()
    for flag, path in (("--csv", csv_path), ("--plot", plot_path)):
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"{flag} {path}: the folder {path.parent} does not exist; create it "
                              "or write the file elsewhere.")
    clusters = _split(values["cluster"] or "")
    if clusters:
        require_dask()
        for spec in clusters:
            parse_local(spec)  # a mistyped local:N is said before the sweep
        if values["memory_limit"] is not None:
            raise ConfigError("--memory-limit puts one process in a memory cgroup; a cluster's "
                              "workers have their own limits (dask worker --memory-limit).")
    configs = sweep_configs(_split(values["sweep_memory"]), _split(values["strategies"]), clusters)
    source = open_source(str(values["model"]))  # a missing or unreadable model is said once, not per run
    model_files = sorted(source.file_sizes()) if source.format != "synthetic" else []
    source.close()
    limit = _memory_limit(values["memory_limit"])
    if limit is not None:
        check_memory_limit(limit)  # no root or no writable memory cgroup: said before the sweep
    llama = None
    if values["llama_cpp"]:
        check_llama_cpp(source.format, source.path)
        llama = LlamaCppSettings(source.path, str(values["prompt"]), int(values["max_tokens"]),
                                 int(values["max_context"]), values["threads"])
        configs.append(LLAMA_CPP_CONFIG)
    options = run_command_options(
        prompt=str(values["prompt"]), max_tokens=int(values["max_tokens"]),
        max_context=int(values["max_context"]), backend=values["backend"], threads=values["threads"],
        activations=values["activations"],
        kv_cache=check_mode(str(values["kv_cache"])),  # said once, not per run
        governor=values["governor"], soft_temp_limit=values["soft_temp_limit"],
    )
    drop = [*model_files, *prepared_files_of(model_files)] if limit is not None else []

    def progress(i: int, n: int, cfg: BenchConfig, result: BenchResult | None) -> None:
        if result is None:
            typer.echo(f"[{i}/{n}] {cfg.label} ...", err=True)
        elif result.error:
            typer.echo(f"[{i}/{n}] {cfg.label}: failed: {result.error}", err=True)
        else:
            typer.echo(f"[{i}/{n}] {cfg.label}: {result.decode_tokens_per_s or 0:.1f} tok/s", err=True)

    results = run_sweep(configs, str(values["model"]), options, repeat=int(values["repeat"]),
                        on_progress=progress, memory_limit=limit, drop_files=drop, llama_cpp=llama)
    summary = summarize(results)
    # The results first, so that a failing file write below never loses the sweep.
    if as_json:
        print_json({"rows": [r.as_dict() for r in results], "summary": summary})
    else:
        _print_table(results, summary)
    if csv_path is not None:
        try:
            csv_path.write_text(to_csv(results), encoding="utf-8")
        except OSError as exc:
            raise EdgeRTError(
                f"Could not write the CSV to {csv_path}: {exc.strerror or exc}; the table above "
                "has the results."
            ) from None
    if plot_path is not None:
        plot(results, str(plot_path))


def _memory_limit(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return MemoryBudget.parse(str(text)).bytes
    except BudgetError:
        raise ConfigError(
            f"Cannot read --memory-limit {text!r}: write a size such as 160M, 1G or 512MiB."
        ) from None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _size(value: float | None) -> str:
    return "-" if value is None else format_bytes(int(value))


BENCH_COLUMNS: list[tuple[str, Justify]] = [
    ("strategy", "left"), ("budget", "right"), ("groups", "right"), ("peak RSS", "right"),
    ("base RSS", "right"), ("over base", "right"), ("ms/tok", "right"), ("compute ms", "right"),
    ("load ms", "right"), ("hidden", "right"), ("tok/s", "right"), ("x base", "right"),
    ("read/tok", "right"), ("disk MiB/s", "right"),
]
CLUSTER_COLUMNS: list[tuple[str, Justify]] = [
    ("cluster", "left"), ("workers", "right"), ("hop ms", "right"),
]
LIMIT_COLUMNS: list[tuple[str, Justify]] = [
    ("limit", "right"), ("cgroup peak", "right"), ("failcnt", "right"), ("disk bound", "right"),
    ("x bound", "right"),
]


def _print_table(results: list[BenchResult], summary: dict[str, Any]) -> None:
    notes = ["failed: " + r.error if r.error else
             "" if r.within_budget in (None, True) else "OVER BUDGET" for r in results]
    limited = any(r.memory_limit_bytes is not None for r in results)
    heat = any(r.temperature_start_c is not None for r in results)
    adapted = any(r.events for r in results)
    clustered = any(r.cluster is not None for r in results)
    columns = (BENCH_COLUMNS + (LIMIT_COLUMNS if limited else [])
               + (CLUSTER_COLUMNS if clustered else [])
               + ([("°C start", "right"), ("°C end", "right")] if heat else [])
               + ([("events", "left")] if adapted else []))
    table = make_table(columns + ([("note", "left")] if any(notes) else []))
    for r, note in zip(results, notes, strict=True):
        budget = r.budget or "none"
        if r.error:
            cells = [r.strategy, budget] + ["-"] * (len(BENCH_COLUMNS) - 2)
        else:
            cells = [
                r.strategy, budget, str(r.groups or 0),
                "-" if r.peak_rss_bytes is None else format_bytes(r.peak_rss_bytes),
                "-" if r.baseline_rss_bytes is None else format_bytes(r.baseline_rss_bytes),
                "-" if r.peak_over_baseline_bytes is None else format_bytes(r.peak_over_baseline_bytes),
                _fmt(r.ms_per_token, ".1f"), _fmt(r.compute_ms_per_token, ".1f"),
                _fmt(r.load_ms_per_token, ".1f"), _fmt(r.hidden_load_fraction, ".0%"),
                _fmt(r.decode_tokens_per_s, ".1f"), _fmt(r.speed_vs_baseline, ".2f"),
                _size(r.read_bytes_per_token), _fmt(r.disk_mib_per_s, ".1f"),
            ]
        if limited:  # also for a failed row: an OOM kill's peak is the limit
            cells += [_size(r.memory_limit_bytes), _size(r.cgroup_peak_bytes),
                      "-" if r.failcnt is None else str(r.failcnt),
                      _fmt(r.disk_bound_tokens_per_s, ".1f"), _fmt(r.of_disk_bound, ".2f")]
        if clustered:
            cells += [r.cluster or "one process", "-" if r.workers is None else str(r.workers),
                      _fmt(r.hop_ms, ".1f")]
        if heat:
            cells += [_fmt(r.temperature_start_c, ".1f"), _fmt(r.temperature_end_c, ".1f")]
        if adapted:  # the governor changed the run: say how, briefly
            cells += [", ".join(f"{e.get('kind')}@{e.get('token_index')}" for e in r.events) or "-"]
        add_row(table, cells + ([note] if any(notes) else []))
    echo_table(table)
    typer.echo("")
    typer.echo(f"fastest: {summary['fastest']}")
    typer.echo(f"most memory-efficient: {summary['most_memory_efficient']}")
    rounds = summary["speculative_vs_sequential_by_round"]
    for budget, ratio in summary["speculative_vs_sequential"].items():
        by_round = rounds.get(budget)
        detail = "" if not by_round else " (round by round: " + ", ".join(f"{r:.2f}" for r in by_round) + ")"
        typer.echo(f"speculative-prefetch / sequential at {budget}: {ratio:.2f}x{detail}")
    typer.echo(f"peak RSS over baseline within budget for every run: {summary['all_within_budget']}")
    if clustered:
        typer.echo("(cluster rows: the budget is each worker's; the RSS columns are the worker whose "
                   "peak rose most over its baseline; 'hop ms' is the median over the workers of "
                   "the time a call into one took beyond its own work)")
    typer.echo(f"identical generated tokens across runs: {summary['identical_outputs']}")
    if summary["llama_cpp_same_tokens"] is not None:
        same = summary["llama_cpp_same_tokens"]
        detail = "" if same else f" (the first {summary['llama_cpp_common_prefix_tokens']} agree)"
        typer.echo(f"llama.cpp generated the same tokens: {same}{detail}")
    if summary["memory_limit_bytes"] is not None:
        killed = ", ".join(summary["oom_killed"]) or "none"
        typer.echo(f"memory limit {format_bytes(summary['memory_limit_bytes'])} per run (a fresh memory "
                   f"cgroup each, page cache counted, no swap; the model's cached pages dropped "
                   f"first); OOM-killed: {killed}")
        speed = next((r.disk_read_bytes_per_s for r in results if r.disk_read_bytes_per_s), None)
        if speed:
            typer.echo(f"disk: the model file reads at {speed / 2**20:.0f} MiB/s (O_DIRECT, measured "
                       "before the sweep); 'disk bound' is the tok/s that allows for a row's reads")
    if summary["cached_at_start_bytes"] > 2**20:
        cached = format_bytes(summary["cached_at_start_bytes"])
        typer.echo(f"note: up to {cached} of the model file stayed in the page cache after the drop "
                   "(another process maps it?); reads of those pages did not reach the disk and were "
                   "not charged to the run's cgroup")
    if summary["rounds"] > 1:
        typer.echo(f"({summary['rounds']} rounds: each row is its configuration's median-speed run, "
                   "with the highest peak of its rounds)")
    if results and results[0].budget_bytes is None and results[0].peak_rss_bytes:
        typer.echo(f"(baseline: no budget, peak RSS {format_bytes(results[0].peak_rss_bytes)})")
