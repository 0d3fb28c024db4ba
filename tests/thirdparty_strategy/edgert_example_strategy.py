"""An example edge-rt strategy plugin: stream the layers two at a time."""

from __future__ import annotations

from collections.abc import Callable

from edgert_core.plugin_api import (
    ExecutionPlan,
    InfeasibleBudgetError,
    LayerGroup,
    ModelLayout,
    PartitionStrategy,
    PlanningContext,
    format_bytes,
    hookimpl,
    make_plan,
)

EDGERT_API = "1.0"  # the edgert_core.plugin_api version this plugin is written against


class PairsStrategy(PartitionStrategy):
    """Layers 0-1, 2-3, ... each loaded, computed and released together; the head in the core's
    default slices; no prefetch."""

    name = "pairs"
    description = "streams the layers two at a time"

    def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
        n = len(layout.layers)
        groups = [LayerGroup(tuple(range(i, min(i + 2, n)))) for i in range(0, n, 2)]
        plan = make_plan(self.name, layout, ctx, groups)  # the core computes the peak
        budget = ctx.budget_bytes
        if budget is not None and plan.predicted_peak_bytes > budget:
            need = plan.predicted_peak_bytes
            raise InfeasibleBudgetError(
                f"The pairs strategy needs {format_bytes(need)} ({need} bytes) for {layout.name}, "
                f"more than the budget of {format_bytes(budget)}; raise --memory-budget or use "
                "--strategy sequential.",
                minimum_bytes=need,
            )
        return plan


@hookimpl
def edgert_register_strategies(register: Callable[[type[PartitionStrategy]], None]) -> None:
    register(PairsStrategy)
