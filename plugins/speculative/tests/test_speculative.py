"""The speculative-prefetch strategy on synthetic and hand-made layouts, directly and through the
registry."""

from __future__ import annotations

import random

import pytest
from edgert_speculative import SpeculativePrefetchStrategy, prefetch_minimum

from edgert_core import (
    ExecutionPlan,
    InfeasibleBudgetError,
    LayerGroup,
    ModelLayout,
    PlanningContext,
    format_bytes,
    load_registry,
    plan_with,
    synthetic_layout,
)
from edgert_core.plugin_api import (
    PREFETCH_DEPTH,
    fixed_bytes,
    group_stages,
    make_plan,
    minimum_budget,
    streamed_stages,
    validate_plan,
)
from edgert_core.testing import handmade_layout as handmade
from edgert_core.testing import small_context as small_ctx

MiB = 1024**2
SHAPES = ["smollm2-135m", "gpt2-small"]


def with_room(layout: ModelLayout, room: int) -> PlanningContext:
    """A small context whose budget leaves ``room`` bytes for weights."""
    return small_ctx(fixed_bytes(layout, small_ctx(None)) + room)


def plan_and_check(layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
    plan = SpeculativePrefetchStrategy().plan(layout, ctx)
    validate_plan(plan, layout, ctx)
    assert plan.strategy == "speculative-prefetch"
    return plan


def streamed(plan: ExecutionPlan) -> list[tuple[int, ...]]:
    return [g.layers for g in plan.groups if not g.resident]


def window(plan: ExecutionPlan, layout: ModelLayout, ctx: PlanningContext) -> int:
    """Bytes left beside the resident part for the stage slots."""
    assert ctx.budget_bytes is not None
    return ctx.budget_bytes - fixed_bytes(layout, ctx) - plan.resident_bytes(layout)


def stage_sizes(plan: ExecutionPlan, layout: ModelLayout) -> list[int]:
    """Bytes of each streamed stage, in order, the head's slices included."""
    return streamed_stages(layout, plan.groups, plan.head_resident, plan.head_slice_bytes,
                           plan.stage_bytes)


def largest_part(layout: ModelLayout) -> int:
    return max(b for parts in layout.part_bytes for b in parts)


def assert_pipelined(plan: ExecutionPlan, layout: ModelLayout, ctx: PlanningContext) -> None:
    """The stage computing and PREFETCH_DEPTH stages ahead fit beside the resident part, and a stage
    of several block parts holds at most the plan's stage size, itself at most the context's."""
    sizes = stage_sizes(plan, layout)
    assert plan.stage_slots(layout) == 1 + min(PREFETCH_DEPTH, len(sizes) - 1)
    assert plan.stage_slots(layout) * max(sizes) <= window(plan, layout, ctx)
    assert 0 < plan.stage_bytes <= ctx.stage_bytes
    for g in plan.groups:
        if g.resident:
            continue
        for stage in group_stages(layout, g.layers, plan.stage_bytes):
            parts = [layout.part_bytes[i][p] for i, p in stage]
            if sum(1 for b in parts if b) > 1:
                assert sum(parts) <= plan.stage_bytes


@pytest.mark.parametrize("shape", SHAPES)
def test_no_budget_keeps_everything_resident(shape: str) -> None:
    layout = synthetic_layout(shape)
    plan = plan_and_check(layout, PlanningContext(None))
    assert plan.groups == (LayerGroup(tuple(range(len(layout.layers))), resident=True),)
    assert plan.head_resident and not plan.prefetch


@pytest.mark.parametrize("shape", SHAPES)
def test_resident_exactly_when_everything_fits(shape: str) -> None:
    layout = synthetic_layout(shape)
    everything = plan_and_check(layout, PlanningContext(None)).predicted_peak_bytes
    assert not plan_and_check(layout, PlanningContext(everything)).prefetch
    plan = plan_and_check(layout, PlanningContext(everything - 1))
    assert plan.prefetch and plan.streamed_bytes_per_token(layout) > 0


@pytest.mark.parametrize("shape", SHAPES)
def test_prefetch_minimum_is_one_slot_per_stage_in_flight(shape: str) -> None:
    # the largest block part (the MLP's first products) computing and PREFETCH_DEPTH loading ahead
    layout = synthetic_layout(shape)
    ctx = PlanningContext(None)
    slots = 1 + PREFETCH_DEPTH
    assert prefetch_minimum(layout, ctx) == fixed_bytes(layout, ctx) + slots * largest_part(layout)
    assert prefetch_minimum(layout, ctx) > minimum_budget(layout, ctx)


@pytest.mark.parametrize("shape", SHAPES)
def test_budget_exactly_at_the_prefetch_minimum(shape: str) -> None:
    layout = synthetic_layout(shape)
    ctx = PlanningContext(prefetch_minimum(layout, PlanningContext(None)))
    plan = plan_and_check(layout, ctx)
    assert plan.prefetch and plan.predicted_peak_bytes == ctx.budget_bytes
    assert streamed(plan) == [tuple(range(len(layout.layers)))] and not plan.head_resident
    assert max(stage_sizes(plan, layout)) == largest_part(layout)
    assert_pipelined(plan, layout, ctx)


@pytest.mark.parametrize("shape", SHAPES)
def test_between_the_two_minimums_states_the_prefetch_minimum(shape: str) -> None:
    layout = synthetic_layout(shape)
    needed = prefetch_minimum(layout, PlanningContext(None))
    for budget in (needed - 1, minimum_budget(layout, PlanningContext(None))):
        with pytest.raises(InfeasibleBudgetError) as info:
            SpeculativePrefetchStrategy().plan(layout, PlanningContext(budget))
        assert info.value.minimum_bytes == needed
        message = str(info.value)
        assert "prefetch" in message and format_bytes(needed) in message and str(needed) in message
        assert "sequential" in message  # what to do instead


@pytest.mark.parametrize("shape", SHAPES)
def test_one_byte_below_the_core_minimum(shape: str) -> None:
    layout = synthetic_layout(shape)
    minimum = minimum_budget(layout, PlanningContext(None))
    ctx = PlanningContext(minimum - 1)
    with pytest.raises(InfeasibleBudgetError) as direct:
        SpeculativePrefetchStrategy().plan(layout, ctx)
    assert direct.value.minimum_bytes == prefetch_minimum(layout, ctx)
    with pytest.raises(InfeasibleBudgetError) as planned:
        plan_with(load_registry(), "speculative-prefetch", layout, ctx)
    assert planned.value.minimum_bytes == minimum and str(minimum) in str(planned.value)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mib", [96, 128, 256, 384, 512])
def test_keeps_the_largest_prefix_that_leaves_a_pipeline(shape: str, mib: int) -> None:
    layout = synthetic_layout(shape)
    ctx = PlanningContext(mib * MiB)
    plan = plan_and_check(layout, ctx)
    assert plan.prefetch
    assert_pipelined(plan, layout, ctx)
    resident = [g for g in plan.groups if g.resident]
    k = len(resident[0].layers) if resident else 0
    n = len(layout.layers)
    assert streamed(plan) == ([tuple(range(k, n))] if k < n else [])
    if k == n:
        return  # every layer resident, the head streamed
    # one more resident layer no longer fits, even with the rest in the smallest stages
    groups = [LayerGroup(tuple(range(k + 1)), resident=True)]
    groups += [LayerGroup(tuple(range(k + 1, n)))] if k + 1 < n else []
    denser = make_plan("probe", layout, ctx, groups, prefetch=True,
                       head_resident=plan.head_resident, stage_bytes=1,
                       head_slice_bytes=None if plan.head_resident else largest_part(layout))
    assert denser.predicted_peak_bytes > mib * MiB


def test_smollm2_figures() -> None:
    layout = synthetic_layout("smollm2-135m")
    with pytest.raises(InfeasibleBudgetError):  # above the core minimum, below two layers
        SpeculativePrefetchStrategy().plan(layout, PlanningContext(40 * MiB))
    plan = plan_and_check(layout, PlanningContext(64 * MiB))
    assert plan.groups == (LayerGroup((0,), resident=True), LayerGroup(tuple(range(1, 30))))
    assert not plan.head_resident and plan.stage_bytes == 4 * MiB
    # attention (3.4 MiB), the MLP's first products (6.8 MiB) and its last (3.4 MiB): a stage
    # each, then the head (the 108 MiB output projection and the final norm) in 28 slices of at
    # most 4 MiB
    assert plan.loads_per_token(layout) == 29 * 3 + 28
    plan = plan_and_check(layout, PlanningContext(256 * MiB))
    assert plan.groups[0] == LayerGroup(tuple(range(15)), resident=True)
    plan = plan_and_check(layout, PlanningContext(1024 * MiB))
    assert plan.head_resident and not plan.prefetch


def test_a_big_first_layer_stays_resident_beside_small_stages() -> None:
    # streaming the 60,000-byte layer would need three slots of its size; with it resident, three
    # resident layers leave 3,000 bytes: three slots of one 1,000-byte layer each
    layout = handmade([60_000] + [1_000] * 10, head_bytes=0)
    ctx = with_room(layout, 65_000)
    plan = plan_and_check(layout, ctx)
    assert plan.prefetch
    assert plan.groups == (LayerGroup((0, 1, 2), resident=True), LayerGroup(tuple(range(3, 11))))
    assert stage_sizes(plan, layout) == [1_000] * 8
    assert plan.predicted_peak_bytes == ctx.budget_bytes
    # the lowest peak keeps just the big layer resident, not three slots of 60,000 bytes
    assert prefetch_minimum(layout, ctx) == fixed_bytes(layout, ctx) + 60_000 + 3 * 1_000
    assert_pipelined(plan, layout, ctx)


def test_a_last_layer_three_slots_cannot_hold_must_be_resident() -> None:
    # streaming the 300-byte layer needs three 300-byte slots; keeping it resident keeps every
    # layer, so the minimum is the whole model
    layout = handmade([10] * 40 + [300], head_bytes=0)
    ctx = with_room(layout, 600)
    with pytest.raises(InfeasibleBudgetError) as info:
        plan_and_check(layout, ctx)
    assert info.value.minimum_bytes == fixed_bytes(layout, ctx) + 700


def test_stages_merge_block_parts_up_to_the_stage_size() -> None:
    # SmolLM2's parts: attention 3.4 MiB, the MLP's first products 6.8 MiB, its last 3.4 MiB. With
    # 8 MiB stages a layer's last part and the next layer's attention share a stage.
    layout = synthetic_layout("smollm2-135m")
    ctx = PlanningContext(128 * MiB, stage_bytes=8 * MiB)
    plan = plan_and_check(layout, ctx)
    assert 2 * 3.375 * MiB <= plan.stage_bytes <= 8 * MiB
    (group,) = [g for g in plan.groups if not g.resident]
    k = group.layers[0]
    cuts = group_stages(layout, group.layers, plan.stage_bytes)
    assert cuts[:3] == [[(k, 0)], [(k, 1)], [(k, 2), (k + 1, 0)]]
    assert cuts[-1] == [(29, 2)]
    assert_pipelined(plan, layout, ctx)


def test_a_small_window_shrinks_the_stages() -> None:
    layout = handmade([100] * 500, head_bytes=1_000)
    ctx = with_room(layout, 20_050)
    plan = plan_and_check(layout, ctx)
    # the largest prefix leaves a window of 350 (one more resident layer would leave 250, less
    # than three 100-byte slots): stages of at most 350 // 3 = 116 bytes, one layer each
    assert plan.prefetch
    assert plan.stage_bytes == 116
    assert plan.streamed_bytes_per_token(layout) == 31_300
    assert window(plan, layout, ctx) == 350
    assert_pipelined(plan, layout, ctx)


def test_many_tiny_layers_no_room_to_spare() -> None:
    layout = handmade([100] * 500, head_bytes=1_000)
    ctx = small_ctx(prefetch_minimum(layout, small_ctx(None)))
    plan = plan_and_check(layout, ctx)
    assert streamed(plan) == [tuple(range(500))]
    assert plan.predicted_peak_bytes == ctx.budget_bytes == fixed_bytes(layout, ctx) + 3 * 100
    assert_pipelined(plan, layout, ctx)


def test_one_layer() -> None:
    layout = handmade([1_000], head_bytes=3_000)
    assert not plan_and_check(layout, with_room(layout, 4_000)).prefetch
    plan = plan_and_check(layout, with_room(layout, 3_999))
    assert plan.groups == (LayerGroup((0,), resident=True),)
    assert not plan.head_resident and plan.prefetch


def test_registered_through_its_entry_point() -> None:
    registry = load_registry()
    provider = registry.provider("strategy", "speculative-prefetch")
    assert (provider.name, provider.distribution) == ("speculative", "edgert-speculative")
    layout = synthetic_layout("smollm2-135m")
    ctx = PlanningContext(128 * MiB)
    plan = plan_with(registry, "speculative-prefetch", layout, ctx)
    assert plan.prefetch and plan.predicted_peak_bytes <= 128 * MiB


def test_random_layouts_fit_or_state_the_prefetch_minimum() -> None:
    rng = random.Random(7)
    for _ in range(300):
        sizes = [rng.randint(0, 1_000) for _ in range(rng.randint(1, 10))]
        layout = handmade(sizes, head_bytes=rng.choice([0, rng.randint(1, 3_000)]))
        base = small_ctx(None)
        needed = prefetch_minimum(layout, base)
        everything = fixed_bytes(layout, base) + sum(sizes) + layout.head_bytes
        ctx = small_ctx(rng.randint(minimum_budget(layout, base), everything))
        assert ctx.budget_bytes is not None
        if ctx.budget_bytes < needed and ctx.budget_bytes < everything:
            with pytest.raises(InfeasibleBudgetError) as info:
                SpeculativePrefetchStrategy().plan(layout, ctx)
            assert info.value.minimum_bytes == needed
            continue
        plan = plan_and_check(layout, ctx)
        assert plan.prefetch == (plan.streamed_bytes_per_token(layout) > 0)
        if plan.prefetch:
            assert_pipelined(plan, layout, ctx)
