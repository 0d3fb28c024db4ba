"""The ``speculative-prefetch`` partition strategy: the next streamed stage loads while the current
one computes.

With prefetch, two consecutive streamed stages are in memory at once (the head's slices count as
stages, and after the head comes the next token's first streamed group), so the core's rule charges
``fixed + resident + max(stage[i] + stage[i+1])``. The rule, with ``room = budget - fixed bytes``:

1. **Everything fits** (or there is no budget): all layers and the head are resident, as with
   ``greedy-grouping``; nothing is streamed, so there is nothing to prefetch (``prefetch`` is off).
2. **Otherwise**, keep as much resident as fits beside a prefetching pipeline: a prefix of the
   layers, ``0..k-1``, plus possibly the head. For both choices of the head the strategy takes the
   largest ``k`` whose tightest pipeline (streamed layers one per stage, the head in the core's
   default slices, prefetch on) fits, then keeps the choice that streams fewer bytes per token
   (then fewer stages, then the resident head). If even ``k = 0`` does not fit, the budget is below
   the *prefetch minimum* and the strategy raises :class:`edgert_core.InfeasibleBudgetError`
   stating it.
3. **Size the stages** in the pair window that is left, ``window = room - resident``: each stage
   holds at most ``window / 2`` bytes, so the next stage (also at most half) always fits beside the
   current one and stages are balanced, which is what lets a load hide behind a compute.
   Consecutive layers are packed into a stage while it stays under half the window and fits beside
   both its neighbours. A layer larger than half the window gets a stage of its own, and its
   neighbours are kept small enough to fit beside it. The head's slices are as large as half the
   window allows beside the last and first streamed layers, and never finer than the core's
   default.

The tightest pipeline's peak only grows with ``k``, so the largest fitting ``k`` is found by
bisection. Every peak comes from :func:`edgert_core.make_plan`.
"""

from __future__ import annotations

from collections.abc import Callable

from edgert_core import (
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

__all__ = ["SpeculativePrefetchStrategy", "edgert_register_strategies", "prefetch_minimum"]

NAME = "speculative-prefetch"


class SpeculativePrefetchStrategy(PartitionStrategy):
    """A resident prefix as large as fits beside a balanced prefetching pipeline of the rest."""

    name = NAME
    description = (
        "loads the next group while the current one computes; groups of at most half the room "
        "left beside the resident prefix"
    )

    def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
        everything = all_resident(layout, ctx)
        budget = ctx.budget_bytes
        if budget is None or everything.predicted_peak_bytes <= budget:
            return everything
        minimum = prefetch_minimum(layout, ctx)
        if budget < minimum:
            raise InfeasibleBudgetError(
                f"A memory budget of {format_bytes(budget)} is too small for {NAME} with "
                f"{layout.name} and a context of {ctx.max_context} tokens: prefetching holds two "
                "consecutive streamed stages at once, which needs at least "
                f"{format_bytes(minimum)} ({minimum} bytes). Raise --memory-budget to that, or "
                "use --strategy sequential, which needs "
                f"{format_bytes(minimum_budget(layout, ctx))}.",
                minimum_bytes=minimum,
            )
        candidates = []
        for head_resident in (True, False):
            k = self._largest_prefix(layout, ctx, head_resident, budget)
            if k is not None:
                candidates.append(pipeline(layout, ctx, k, head_resident, budget))
        return min(candidates, key=lambda p: streaming_rank(p, layout))

    @staticmethod
    def _largest_prefix(
        layout: ModelLayout, ctx: PlanningContext, head_resident: bool, budget: int
    ) -> int | None:
        def fits(k: int) -> bool:
            return tightest(layout, ctx, k, head_resident).predicted_peak_bytes <= budget

        return largest_fitting(len(layout.layers), fits)


def all_resident(layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
    n = len(layout.layers)
    groups = [LayerGroup(tuple(range(n)), resident=True)] if n else []
    return make_plan(NAME, layout, ctx, groups, head_resident=True)


def tightest(
    layout: ModelLayout, ctx: PlanningContext, k: int, head_resident: bool
) -> ExecutionPlan:
    """Layers ``0..k-1`` resident, the others one per prefetched stage, the head (if streamed) in
    the core's default slices: the lowest prefetching peak with this resident part."""
    groups = resident_prefix(k) + [LayerGroup((i,)) for i in range(k, len(layout.layers))]
    return make_plan(NAME, layout, ctx, groups, prefetch=True, head_resident=head_resident)


def prefetch_minimum(layout: ModelLayout, ctx: PlanningContext) -> int:
    """The smallest budget with which this strategy can prefetch: nothing resident, one layer per
    stage (the lower of a streamed and a resident head)."""
    return min(tightest(layout, ctx, 0, h).predicted_peak_bytes for h in (False, True))


def pipeline(
    layout: ModelLayout, ctx: PlanningContext, k: int, head_resident: bool, budget: int
) -> ExecutionPlan:
    """Layers ``0..k-1`` resident and the rest in balanced prefetched stages (module rule 3)."""
    sizes = layout.layer_bytes
    n = len(sizes)
    head = 0 if head_resident else layout.head_bytes
    window = budget - fixed_bytes(layout, ctx) - sum(sizes[:k]) - (layout.head_bytes - head)
    half = window // 2

    slice_bytes = 0
    if head:
        default_slice = max(max(sizes, default=1), 1)
        room = half if k == n else min(half, window - sizes[n - 1], window - sizes[k])
        slice_bytes = min(head, max(default_slice, room))

    stages: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    before = slice_bytes if head else (sizes[n - 1] if k < n else 0)  # the stage before the first
    for i in range(k, n):
        after = _after(sizes, i, head, slice_bytes, stages)
        if current and fits_beside(current_bytes + sizes[i], before, after, half, window):
            current.append(i)
            current_bytes += sizes[i]
            continue
        if current:
            stages.append(current)
            before = current_bytes
        current, current_bytes = [i], sizes[i]
    if current:
        stages.append(current)

    groups = resident_prefix(k) + [LayerGroup(tuple(s)) for s in stages]
    plan = make_plan(
        NAME,
        layout,
        ctx,
        groups,
        prefetch=True,
        head_resident=head_resident,
        head_slice_bytes=slice_bytes if head else None,
    )
    if plan.predicted_peak_bytes > budget:  # cannot happen by the rule above; stay safe
        return tightest(layout, ctx, k, head_resident)
    return plan


def _after(sizes: tuple[int, ...], i: int, head: int, slice_bytes: int,
           stages: list[list[int]]) -> int:
    """The smallest the stage after a group ending at layer ``i`` can be: the next layer, else the
    head's first slice, else (wrapping round) the first streamed stage."""
    if i + 1 < len(sizes):
        return sizes[i + 1]
    if head:
        return slice_bytes
    return sum(sizes[j] for j in stages[0]) if stages else 0


def fits_beside(size: int, before: int, after: int, half: int, window: int) -> bool:
    """Whether a stage of ``size`` bytes keeps to half the window and fits beside both
    neighbours."""
    return size <= half and before + size <= window and size + after <= window


@hookimpl
def edgert_register_strategies(register: Callable[[type[PartitionStrategy]], None]) -> None:
    register(SpeculativePrefetchStrategy)
