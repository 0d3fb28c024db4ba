"""The ``greedy-grouping`` partition strategy: the fewest weight bytes streamed per token, in as few
groups as fit the budget.

The rule, with ``room = budget - fixed bytes`` (KV cache, activations, logits; see
:mod:`edgert_core.plugin_api`):

1. **Everything fits** (or there is no budget): all layers form one resident group and the head is
   resident. Nothing is streamed; the weights are read once.
2. **Otherwise**, keep as much resident as fits and stream the rest. The resident part is a
   prefix of the layers, ``0..k-1``, plus possibly the head. Streaming is not prefetched, so it
   needs a window as large as its largest stage: the largest streamed layer, and the head's slices
   (never finer than the core's default, the largest layer) when the head is streamed. For both
   choices of the head (resident or streamed) the strategy takes the largest ``k`` whose tightest
   plan (streamed layers one by one) still fits, then keeps the choice that streams fewer bytes per
   token (then fewer stages, then the resident head). A prefix is as good as any set of layers when
   the blocks are the same size, as in every transformer here; it keeps the streamed layers
   consecutive, so they can share groups.
3. **Group the streamed layers** in the window that is left, ``room - resident``: consecutive layers
   are packed into a group while they fit (for a fixed window this gives the fewest groups), and the
   head is streamed in slices as large as the window.

The peak of the tightest plan only grows with ``k`` (each layer moved from the stream into the
resident prefix adds its bytes to the resident part and removes at most as many from the window), so
the largest fitting ``k`` is found by bisection. Every peak comes from
:func:`edgert_core.plugin_api.make_plan`.
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
    fixed_bytes,
    format_bytes,
    hookimpl,
    largest_fitting,
    make_plan,
    minimum_budget,
    resident_prefix,
    streaming_rank,
)

EDGERT_API = "1.0"  # the edgert_core.plugin_api version this plugin is written against

__all__ = ["GreedyGroupingStrategy", "edgert_register_strategies"]


class GreedyGroupingStrategy(PartitionStrategy):
    """A resident prefix as large as fits, the rest streamed in as few groups as fit."""

    name = "greedy-grouping"
    description = (
        "the whole model resident when it fits; else the largest resident prefix and the rest "
        "streamed in as few groups as fit"
    )

    def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
        everything = self._all_resident(layout, ctx)
        budget = ctx.budget_bytes
        if budget is None or everything.predicted_peak_bytes <= budget:
            return everything
        candidates = []
        for head_resident in (True, False):
            k = self._largest_prefix(layout, ctx, head_resident, budget)
            if k is not None:
                candidates.append(self._grouped(layout, ctx, k, head_resident, budget))
        if not candidates:
            minimum = minimum_budget(layout, ctx)
            raise InfeasibleBudgetError(
                f"A memory budget of {format_bytes(budget)} is too small for {layout.name} with a "
                f"context of {ctx.max_context} tokens: the smallest feasible budget is "
                f"{format_bytes(minimum)} ({minimum} bytes). Raise --memory-budget or lower "
                "--max-context.",
                minimum_bytes=minimum,
            )
        return min(candidates, key=lambda p: streaming_rank(p, layout))

    def _largest_prefix(
        self, layout: ModelLayout, ctx: PlanningContext, head_resident: bool, budget: int
    ) -> int | None:
        def fits(k: int) -> bool:
            return self._tightest(layout, ctx, k, head_resident).predicted_peak_bytes <= budget

        return largest_fitting(len(layout.layers), fits)

    def _all_resident(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
        n = len(layout.layers)
        groups = [LayerGroup(tuple(range(n)), resident=True)] if n else []
        return make_plan(self.name, layout, ctx, groups, head_resident=True)

    def _tightest(
        self, layout: ModelLayout, ctx: PlanningContext, k: int, head_resident: bool
    ) -> ExecutionPlan:
        """Layers ``0..k-1`` resident, the others streamed one by one, the head (if streamed) in
        the core's default slices: the lowest peak with this resident part."""
        n = len(layout.layers)
        groups = resident_prefix(k) + [LayerGroup((i,)) for i in range(k, n)]
        return make_plan(self.name, layout, ctx, groups, head_resident=head_resident)

    def _grouped(
        self, layout: ModelLayout, ctx: PlanningContext, k: int, head_resident: bool, budget: int
    ) -> ExecutionPlan:
        """The streamed layers packed into as few groups as fit the window left by the resident
        part, the head in slices as large as the window."""
        sizes = layout.layer_bytes
        resident = sum(sizes[:k]) + (layout.head_bytes if head_resident else 0)
        window = budget - fixed_bytes(layout, ctx) - resident
        streamed: list[LayerGroup] = []
        current: list[int] = []
        current_bytes = 0
        for i in range(k, len(sizes)):
            if current and current_bytes + sizes[i] > window:
                streamed.append(LayerGroup(tuple(current)))
                current, current_bytes = [], 0
            current.append(i)
            current_bytes += sizes[i]
        if current:
            streamed.append(LayerGroup(tuple(current)))
        slice_bytes = None if head_resident else max(1, min(window, layout.head_bytes))
        plan = make_plan(
            self.name,
            layout,
            ctx,
            resident_prefix(k) + streamed,
            head_resident=head_resident,
            head_slice_bytes=slice_bytes,
        )
        if plan.predicted_peak_bytes > budget:  # cannot happen by the rule above; stay safe
            return self._tightest(layout, ctx, k, head_resident)
        return plan


@hookimpl
def edgert_register_strategies(register: Callable[[type[PartitionStrategy]], None]) -> None:
    register(GreedyGroupingStrategy)
