"""``edge-rt inspect``: a model's structure and every strategy's plan for a budget."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from edgert_core.api import choose_backend, device_facts, open_source
from edgert_core.budget import MemoryBudget, format_bytes
from edgert_core.cli.app import (
    ClusterOption,
    ConfigOption,
    KVCacheOption,
    WorkerBudgetOption,
    app,
    apply_preset,
    print_json,
    require_at_least,
)
from edgert_core.cli.tables import Justify, add_row, echo_table, make_table
from edgert_core.errors import GenerationError
from edgert_core.inspection import ALL_RESIDENT, compare_plans, describe_layout
from edgert_core.memory import auto_budget
from edgert_core.memory.auto_budget import is_auto
from edgert_core.memory.rss import current_rss_bytes
from edgert_core.models.kv_quant import check_kv_cache
from edgert_core.plan import DEFAULT_MAX_CONTEXT, PlanningContext
from edgert_core.plugins import load_registry


@app.command("inspect")
def inspect_command(
    ctx: typer.Context,
    model: str = typer.Option(
        "smollm2",
        "--model",
        "-m",
        help="A .gguf file, a Hugging Face folder, a pulled name (smollm2) or synthetic-smollm2-135m / "
        "synthetic-gpt2-small.",
    ),
    backend: str | None = typer.Option(
        None, "--backend", help="Backend whose in-memory sizes to plan with; none: the best installed."
    ),
    memory_budget: str | None = typer.Option(
        None, "--memory-budget", "-b", help="Budget to plan for, e.g. 64M, 1G; none: no budget."
    ),
    max_context: int = typer.Option(
        DEFAULT_MAX_CONTEXT, "--max-context", help="Tokens of context (sizes the KV cache)."
    ),
    kv_cache: str = KVCacheOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    cluster: str | None = ClusterOption,
    worker_budget: str | None = WorkerBudgetOption,
    strategy: str = typer.Option(
        "auto", "--strategy", "-s", help="With --cluster: the strategy each worker plans with."),
    config: Path | None = ConfigOption,
) -> None:
    """Show a model's layers, tensor types and bytes, and each installed strategy's plan; with
    --cluster, how a run there would split the layers and each worker's plan."""
    values = apply_preset(
        ctx,
        config,
        {"model": model, "memory_budget": memory_budget, "max_context": max_context, "backend": backend,
         "kv_cache": kv_cache, "cluster": cluster, "worker_budget": worker_budget},
    )
    require_at_least(ctx, config, values, "max_context", 2)
    if values["cluster"] is not None:
        _inspect_cluster(values, strategy, as_json)
        return
    budget = values["memory_budget"]
    auto = auto_budget.resolve(current_rss_bytes()) if is_auto(budget) else None
    plan_ctx = PlanningContext(  # the options first: a mistyped budget is said before any file opens
        budget_bytes=(auto.bytes if auto is not None
                      else None if budget is None else MemoryBudget.parse(budget).bytes),
        max_context=int(values["max_context"]),
        kv_cache=str(values["kv_cache"]),
    )
    registry = load_registry()
    source = open_source(str(values["model"]))
    room, disk = device_facts(source, plan_ctx.budget_bytes, None if auto is None else auto.limit_bytes,
                              auto is not None)
    plan_ctx = replace(plan_ctx, room_bytes=room,
                       disk_bytes_per_s=None if disk is None else disk.bytes_per_s,
                       disk_read_mode=None if disk is None else disk.how)
    chosen = choose_backend(registry, source.dtypes, values["backend"])
    layout = source.layout().with_memory_bytes(chosen.weight_nbytes)
    check_kv_cache(plan_ctx.kv_cache, layout.dims.head_dim)
    report: dict[str, Any] = {
        "model": describe_layout(layout),
        "backend": chosen.name,
        "planning": compare_plans(registry, layout, plan_ctx),
        "budget_source": None if auto is None else auto.source,
    }
    if as_json:
        print_json(report)
        return
    _print_report(report)


PLAN_COLUMNS: list[tuple[str, Justify]] = [
    ("strategy", "left"), ("groups", "right"), ("resident", "right"), ("streamed/tok", "right"),
    ("stages/tok", "right"), ("slots", "right"), ("prefetch", "right"), ("peak", "right"),
]


def _print_report(report: dict[str, Any]) -> None:
    m = report["model"]
    typer.echo(
        f"model {m['name']} ({m['architecture']}): {m['n_layers']} layers, hidden "
        f"{m['hidden']}, heads {m['n_heads']}/{m['n_kv_heads']} kv, vocab {m['vocab']}"
    )
    types = ", ".join(f"{k} x{v}" for k, v in m["tensor_types"].items())
    typer.echo(f"tensor types: {types}; in-memory sizes for backend {report['backend']}")
    typer.echo(
        f"weights in memory: {format_bytes(m['total_weight_bytes'])}; per layer "
        f"{format_bytes(max(m['layer_bytes']))} max; head {format_bytes(m['head_bytes'])}; "
        f"KV cache {format_bytes(m['kv_bytes_per_token'])}/token at f32"
    )
    p = report["planning"]
    budget = "none" if p["budget_bytes"] is None else format_bytes(p["budget_bytes"])
    if report.get("budget_source"):
        budget += f" ({report['budget_source']}; this process's RSS, a run's baseline is larger)"
    scratch = p["kv_scratch_bytes"]
    kv = f"KV cache {p['kv_cache']} {format_bytes(p['kv_cache_bytes'])}" + (
        f" (+ {format_bytes(scratch)} fp32 scratch for one layer)" if scratch else "")
    typer.echo(
        f"\nbudget {budget}, context {p['max_context']} tokens, {kv}: fixed "
        f"{format_bytes(p['fixed_bytes'])}, minimum budget "
        f"{format_bytes(p['minimum_budget_bytes'])}"
    )
    device = p["room_bytes"] is not None
    if device:
        speed = p["disk_read_bytes_per_s"]
        typer.echo(f"under a memory limit: {format_bytes(p['room_bytes'])} for pool and page cache; "
                   "'disk/tok' is what a plan reads from disk each token"
                   + ("" if speed is None else f" (the model's disk: {speed / 2**20:.0f} MiB/s)"))
    errors = any(row["error"] for row in p["plans"])
    columns = PLAN_COLUMNS + ([("disk/tok", "right")] if device else [])
    table = make_table(columns + ([("note", "left")] if errors else []))
    for row in p["plans"]:
        if row["error"]:
            add_row(table, [row["strategy"]] + ["-"] * (len(columns) - 1) + [row["error"]])
            continue
        add_row(table, [
            row["strategy"], str(row["n_groups"]), format_bytes(row["resident_bytes"]),
            format_bytes(row["streamed_bytes_per_token"]), str(row["stages_per_token"]),
            str(row["stage_slots"]), "yes" if row["prefetch"] else "no",
            format_bytes(row["predicted_peak_bytes"]),
        ] + ([format_bytes(row["disk_bytes_per_token"])] if device else []) + ([""] if errors else []))
    echo_table(table)
    typer.echo("")
    resident = [row["strategy"] for row in p["plans"] if row["all_resident"]]
    if resident and p["budget_bytes"] is not None:
        typer.echo(f"{', '.join(resident)}: {ALL_RESIDENT}")
    if p["auto"]:
        typer.echo(f"auto picks: {p['auto']}")
    else:
        typer.echo(f"auto: {p['auto_error']}")


CLUSTER_COLUMNS: list[tuple[str, Justify]] = [
    ("worker", "left"), ("layers", "right"), ("limit", "right"), ("RSS", "right"),
    ("speed", "right"),
    ("budget", "right"), ("minimum", "right"), ("strategy", "left"), ("groups", "left"),
    ("streamed/tok", "right"), ("peak", "right"),
]


def _inspect_cluster(values: dict[str, Any], strategy: str, as_json: bool) -> None:
    """``inspect --cluster``: the split and each worker's plan, nothing prepared."""
    from edgert_core.cluster.pipeline import (
        describe_split,
        require_dask,
        settings_from,
        worker_model_name,
    )
    from edgert_core.cluster.split import SPEED_SPREAD

    require_dask()
    if values["memory_budget"] is not None:
        raise GenerationError("--memory-budget is one process's budget; with --cluster each "
                              "worker has its own: use --worker-budget.")
    budget = values["worker_budget"]
    settings = settings_from(
        worker_model_name(str(values["model"])), backend=values["backend"], strategy=strategy,
        max_context=int(values["max_context"]), kv_cache=str(values["kv_cache"]),
        worker_budget=None if budget is None else MemoryBudget.parse(budget).bytes)
    registry = load_registry()
    whole = open_source(str(values["model"])).validate()
    rows = describe_split(str(values["cluster"]), whole, registry, settings)
    if as_json:
        print_json({"model": whole.name, "cluster": values["cluster"], "workers": rows})
        return
    typer.echo(f"{whole.name}: {whole.config.dims.n_layers} layers on {len(rows)} worker(s) of "
               f"{values['cluster']} (plans as backend {rows[0]['backend']} sizes the weights)")
    table = make_table(CLUSTER_COLUMNS)
    for r in rows:
        groups = " ".join(f"{a}-{b}{'' if res else '*'}"
                          for (a, b), res in zip(r["groups"], r["resident_groups"], strict=True))
        add_row(table, [
            r["address"], f"{r['layers'][0]}-{r['layers'][1]}" + (" +head" if r["head"] else ""),
            "-" if r["memory_limit"] is None else format_bytes(r["memory_limit"]),
            format_bytes(r["rss_bytes"]),
            "-" if r["speed_bytes_per_s"] is None else f"{r['speed_bytes_per_s'] / 1e9:.1f} GB/s",
            "none" if r["budget_bytes"] is None else format_bytes(r["budget_bytes"]),
            format_bytes(r["minimum_bytes"]), r["strategy"], groups,
            format_bytes(r["streamed_bytes_per_token"]), format_bytes(r["predicted_peak_bytes"]),
        ])
    echo_table(table)
    typer.echo("(groups marked * are streamed; the first worker also looks up the token "
               "embeddings, read by row from the file; speed: float32 matrix-vector products, "
               "bytes of weights per second, which weighs the split where workers differ by "
               f"{SPEED_SPREAD:g}x or more)")
