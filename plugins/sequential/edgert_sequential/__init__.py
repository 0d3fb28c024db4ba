"""The ``sequential`` partition strategy: one layer per group, the lowest peak memory of any plan.

Every layer is its own streamed group: it is loaded, computed and released before the next one is
loaded. The head is streamed in slices of the core's default size (no larger than the largest layer)
and nothing is prefetched, so the predicted peak is exactly :func:`edgert_core.plugin_api.minimum_budget`: if
this plan does not fit, nothing does.

Without a budget the plan is the same; it is the plan to pick when memory matters more than speed.
"""

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
    minimum_budget,
)

EDGERT_API = "1.0"  # the edgert_core.plugin_api version this plugin is written against

__all__ = ["SequentialStrategy", "edgert_register_strategies"]


class SequentialStrategy(PartitionStrategy):
    """One layer per group, no prefetch, the head in default-size slices."""

    name = "sequential"
    description = "one layer at a time, the lowest peak memory (and the most weight reads)"

    def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
        groups = [LayerGroup((i,)) for i in range(len(layout.layers))]
        plan = make_plan(self.name, layout, ctx, groups)
        if ctx.budget_bytes is not None and plan.predicted_peak_bytes > ctx.budget_bytes:
            minimum = minimum_budget(layout, ctx)
            raise InfeasibleBudgetError(
                f"A memory budget of {format_bytes(ctx.budget_bytes)} is too small for "
                f"{layout.name} with a context of {ctx.max_context} tokens: even one layer at a "
                f"time needs {format_bytes(minimum)} ({minimum} bytes). Raise --memory-budget or "
                "lower --max-context.",
                minimum_bytes=minimum,
            )
        return plan


@hookimpl
def edgert_register_strategies(register: Callable[[type[PartitionStrategy]], None]) -> None:
    register(SequentialStrategy)
