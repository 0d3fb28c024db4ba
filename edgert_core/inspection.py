"""What ``edge-rt inspect`` reports: a model's structure and, for a budget, every installed
strategy's plan side by side with the one ``auto`` picks. No I/O and no printing here."""

from __future__ import annotations

from collections import Counter
from typing import Any

from edgert_core.device_cost import device_cost
from edgert_core.errors import EdgeRTError
from edgert_core.layout import ModelLayout
from edgert_core.plan import (
    ExecutionPlan,
    PlanningContext,
    fixed_bytes,
    kv_cache_bytes,
    kv_scratch_bytes,
    minimum_budget,
)
from edgert_core.planner import AUTO, all_plans, plan_with
from edgert_core.plugins import PluginRegistry

#: What a plan that keeps every weight resident under a budget is called in reports.
ALL_RESIDENT = "all resident (the budget holds the whole model)"


def all_resident(plan: ExecutionPlan) -> bool:
    """Whether ``plan`` loads every weight once and keeps it: every group and the head resident."""
    return plan.head_resident and all(g.resident for g in plan.groups)


def describe_plan(plan: ExecutionPlan, *, budgeted: bool) -> str:
    """A plan in a few words for people: its strategy and what it does, e.g. ``sequential (30
    groups, 30 streamed, prefetch off)``, or, when a budget holds the whole model, ``speculative-
    prefetch: all resident (the budget holds the whole model)``."""
    if all_resident(plan):
        if budgeted:
            return f"{plan.strategy}: {ALL_RESIDENT}"
        return f"{plan.strategy} (whole model loaded once)"
    streamed = sum(not g.resident for g in plan.groups)
    n = plan.n_groups
    head = "" if plan.head_resident else ", head streamed"
    return (f"{plan.strategy} ({n} group{'s' if n != 1 else ''}, {streamed} streamed{head}, "
            f"prefetch {'on' if plan.prefetch else 'off'})")


def describe_layout(layout: ModelLayout) -> dict[str, Any]:
    """Structure of a model: dimensions, tensor types, bytes per layer, KV bytes per token."""
    dtypes: Counter[str] = Counter()
    for layer in layout.layers:
        for t in layer.tensors:
            dtypes[t.dtype] += 1
    for t in (*layout.embeddings, *layout.head):
        dtypes[t.dtype] += 1
    d = layout.dims
    return {
        "name": layout.name,
        "architecture": d.architecture,
        "n_layers": d.n_layers,
        "hidden": d.hidden,
        "n_heads": d.n_heads,
        "n_kv_heads": d.n_kv_heads,
        "head_dim": d.head_dim,
        "intermediate": d.intermediate,
        "vocab": d.vocab,
        "tensor_types": dict(sorted(dtypes.items())),
        "layer_bytes": list(layout.layer_bytes),
        "layer_file_bytes": [sum(t.nbytes for t in layer.tensors) for layer in layout.layers],
        "embedding_bytes": layout.embedding_bytes,
        "head_bytes": layout.head_bytes,
        "total_weight_bytes": layout.total_weight_bytes,
        "kv_bytes_per_token": layout.kv_bytes_per_token,
        "activation_bytes_per_token": layout.activation_bytes_per_token,
    }


def compare_plans(
    registry: PluginRegistry, layout: ModelLayout, ctx: PlanningContext
) -> dict[str, Any]:
    """Every installed strategy's plan for ``ctx`` and the one ``auto`` picks."""
    rows = []
    for outcome in all_plans(registry, layout, ctx):
        plan = outcome.plan
        rows.append(
            {
                "strategy": outcome.strategy,
                "error": outcome.error,
                "groups": None if plan is None else [list(g.layers) for g in plan.groups],
                "n_groups": None if plan is None else plan.n_groups,
                "resident_bytes": None if plan is None else plan.resident_bytes(layout),
                "streamed_bytes_per_token": None
                if plan is None
                else plan.streamed_bytes_per_token(layout),
                "stages_per_token": None if plan is None else plan.loads_per_token(layout),
                "stage_slots": None if plan is None else plan.stage_slots(layout),
                "prefetch": None if plan is None else plan.prefetch,
                "predicted_peak_bytes": None if plan is None else plan.predicted_peak_bytes,
                "all_resident": None if plan is None else all_resident(plan),
                # what it reads from disk per token on this device (0 without a memory limit)
                "disk_bytes_per_token": None if plan is None
                else device_cost(plan, layout, ctx.room_bytes).disk_bytes_per_token,
            }
        )
    try:
        auto: str | None = plan_with(registry, AUTO, layout, ctx).strategy
        auto_error = None
    except EdgeRTError as exc:
        auto, auto_error = None, str(exc)
    return {
        "budget_bytes": ctx.budget_bytes,
        "max_context": ctx.max_context,
        "kv_cache": ctx.kv_cache,
        "kv_cache_bytes": kv_cache_bytes(layout, ctx),
        "kv_scratch_bytes": kv_scratch_bytes(layout, ctx),
        "fixed_bytes": fixed_bytes(layout, ctx),
        "minimum_budget_bytes": minimum_budget(layout, ctx),
        "room_bytes": ctx.room_bytes,
        "disk_read_bytes_per_s": ctx.disk_bytes_per_s,
        "plans": rows,
        "auto": auto,
        "auto_error": auto_error,
    }
