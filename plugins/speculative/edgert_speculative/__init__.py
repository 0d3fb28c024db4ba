"""The ``speculative-prefetch`` partition strategy: while one streamed stage computes, the next ones
load on a background thread, in stages small enough to stay in the CPU's cache.

With prefetch the core's rule holds one stage slot for the stage computing and one for each of the
:data:`edgert_core.plugin_api.PREFETCH_DEPTH` stages loading ahead (the head's slices count as
stages, and after the head comes the next token's first stage), each as large as the largest stage:
``fixed + resident + slots * max(stage)``. The rule, with ``room = budget - fixed bytes``:

1. **Everything fits** (or there is no budget): all layers and the head are resident, as with
   ``greedy-grouping``; nothing is streamed, so there is nothing to prefetch (``prefetch`` is off).
2. **Otherwise** keep a prefix of the layers, ``0..k-1``, resident (and possibly the head) and stream
   the rest as one group, cut by the core into stages of at most ``stage_bytes`` between block parts
   (attention, the MLP's first products, its last product). ``stage_bytes`` is the context's
   ``stage_bytes`` (cache-sized, 4 MiB by default), or less when the window left beside the resident
   part, ``room - resident``, cannot hold a slot per stage of that size: then it is the window divided
   by the slots. For both choices of the head the strategy takes the largest ``k`` that fits and
   keeps the choice that streams fewer bytes per token (then fewer stages, then the lower peak).
3. **Below the prefetch minimum** (the lowest peak of any resident prefix with stages of single
   block parts, usually with nothing resident) the strategy raises
   :class:`edgert_core.plugin_api.InfeasibleBudgetError` stating that minimum.

The strategy tries ``k`` from the largest down and keeps the first that fits: a larger ``k`` shrinks
the window, but it can also take the largest layer out of the stage slots, so whether ``k`` fits is
not monotone in ``k``. Every peak comes from :func:`edgert_core.plugin_api.make_plan`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from edgert_core.plugin_api import (
    PREFETCH_DEPTH,
    ExecutionPlan,
    InfeasibleBudgetError,
    LayerGroup,
    ModelLayout,
    PartitionStrategy,
    PlanningContext,
    fixed_bytes,
    format_bytes,
    hookimpl,
    make_plan,
    minimum_budget,
    resident_prefix,
    streaming_rank,
)

EDGERT_API = "1.0"  # the edgert_core.plugin_api version this plugin is written against

__all__ = ["SpeculativePrefetchStrategy", "edgert_register_strategies", "prefetch_minimum"]

NAME = "speculative-prefetch"


class SpeculativePrefetchStrategy(PartitionStrategy):
    """A resident prefix as large as fits beside a prefetching pipeline of cache-sized stages."""

    name = NAME
    description = (
        "loads the next stages on a background thread while the current one computes; "
        "cache-sized stages beside the largest resident prefix that fits"
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
                f"{layout.name} and a context of {ctx.max_context} tokens: prefetching holds the "
                f"stage computing and {PREFETCH_DEPTH} loading ahead at once, which needs at least "
                f"{format_bytes(minimum)} ({minimum} bytes). Raise --memory-budget to that, or "
                "use --strategy sequential, which needs "
                f"{format_bytes(minimum_budget(layout, ctx))}.",
                minimum_bytes=minimum,
            )
        candidates = [
            plan
            for head_resident in (True, False)
            if (plan := _largest_prefix(layout, ctx, head_resident, budget)) is not None
        ]
        return min(candidates, key=lambda p: streaming_rank(p, layout))


def _largest_prefix(
    layout: ModelLayout, ctx: PlanningContext, head_resident: bool, budget: int
) -> ExecutionPlan | None:
    """The pipeline with the largest resident prefix that fits (module rule 2)."""
    for k in range(len(layout.layers), -1, -1):
        plan = pipeline(layout, ctx, k, head_resident, budget)
        if plan.predicted_peak_bytes <= budget:
            return plan
    return None


def all_resident(layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
    n = len(layout.layers)
    groups = [LayerGroup(tuple(range(n)), resident=True)] if n else []
    return make_plan(NAME, layout, ctx, groups, head_resident=True)


def pipeline(
    layout: ModelLayout, ctx: PlanningContext, k: int, head_resident: bool, budget: int | None
) -> ExecutionPlan:
    """Layers ``0..k-1`` resident, the rest one streamed group in stages of at most the context's
    ``stage_bytes``, less if the window beside the resident part needs it (module rule 2); with
    ``budget`` ``None``, the smallest stages (single block parts)."""
    n = len(layout.layers)
    groups = resident_prefix(k) + ([LayerGroup(tuple(range(k, n)))] if k < n else [])
    if budget is None:
        stage = 1  # every block part a stage of its own, the head in the smallest useful slices
    else:
        resident = sum(layout.layer_bytes[:k]) + (layout.head_bytes if head_resident else 0)
        window = budget - fixed_bytes(layout, ctx) - resident
        # Stages below the largest streamed block part cannot shrink the slots (that part is a
        # stage of its own), so the stage size stops there and the head's slices stay few.
        floor = min(ctx.stage_bytes, max(_largest_part(layout, range(k, n)), 1))
        stage = max(floor, min(ctx.stage_bytes, window // (1 + PREFETCH_DEPTH)))
    head_slice = None
    if not head_resident and budget is None:
        head_slice = max(_largest_part(layout, range(k, n)), 1)
    return make_plan(
        NAME,
        layout,
        ctx,
        groups,
        prefetch=True,
        head_resident=head_resident,
        stage_bytes=stage,
        head_slice_bytes=head_slice,
    )


def _largest_part(layout: ModelLayout, layers: Iterable[int]) -> int:
    return max((b for i in layers for b in layout.part_bytes[i]), default=0)


def prefetch_minimum(layout: ModelLayout, ctx: PlanningContext) -> int:
    """The smallest budget with which this strategy can prefetch: the lowest peak over every
    resident prefix, head resident or streamed, with every streamed block part a stage of its own
    and head slices as large as the largest streamed part. Usually nothing is resident; a layer
    much larger than the rest is cheaper resident than in three stage slots."""
    n = len(layout.layers)
    return min(
        pipeline(layout, ctx, k, h, None).predicted_peak_bytes
        for k in range(n + 1)
        for h in (False, True)
    )


@hookimpl
def edgert_register_strategies(register: Callable[[type[PartitionStrategy]], None]) -> None:
    register(SpeculativePrefetchStrategy)
