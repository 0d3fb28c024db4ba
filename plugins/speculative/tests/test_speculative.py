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
    fixed_bytes,
    format_bytes,
    load_registry,
    make_plan,
    minimum_budget,
    plan_with,
    synthetic_layout,
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
    """Bytes left for two consecutive streamed stages."""
    assert ctx.budget_bytes is not None
    return ctx.budget_bytes - fixed_bytes(layout, ctx) - plan.resident_bytes(layout)


def assert_balanced(plan: ExecutionPlan, layout: ModelLayout, ctx: PlanningContext) -> None:
    """Stages of several layers hold at most half the pair window."""
    half = window(plan, layout, ctx) // 2
    sizes = layout.layer_bytes
    for layers in streamed(plan):
        if len(layers) > 1:
            assert sum(sizes[i] for i in layers) <= half


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
def test_prefetch_minimum_is_two_layers_side_by_side(shape: str) -> None:
    layout = synthetic_layout(shape)
    ctx = PlanningContext(None)
    layer = layout.layer_bytes[0]
    assert prefetch_minimum(layout, ctx) == fixed_bytes(layout, ctx) + 2 * layer
    assert prefetch_minimum(layout, ctx) > minimum_budget(layout, ctx)


@pytest.mark.parametrize("shape", SHAPES)
def test_budget_exactly_at_the_prefetch_minimum(shape: str) -> None:
    layout = synthetic_layout(shape)
    ctx = PlanningContext(prefetch_minimum(layout, PlanningContext(None)))
    plan = plan_and_check(layout, ctx)
    assert plan.prefetch and plan.predicted_peak_bytes == ctx.budget_bytes
    assert streamed(plan) == [(i,) for i in range(len(layout.layers))]


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
    assert_balanced(plan, layout, ctx)
    resident = [g for g in plan.groups if g.resident]
    k = len(resident[0].layers) if resident else 0
    # one more resident layer, with the rest streamed one by one, no longer fits
    groups = [LayerGroup(tuple(range(k + 1)), resident=True)]
    groups += [LayerGroup((i,)) for i in range(k + 1, len(layout.layers))]
    denser = make_plan(
        "probe", layout, ctx, groups, prefetch=True, head_resident=plan.head_resident
    )
    assert denser.predicted_peak_bytes > mib * MiB


def test_smollm2_figures() -> None:
    layout = synthetic_layout("smollm2-135m")
    with pytest.raises(InfeasibleBudgetError):  # above the core minimum, below two layers
        SpeculativePrefetchStrategy().plan(layout, PlanningContext(40 * MiB))
    plan = plan_and_check(layout, PlanningContext(64 * MiB))
    assert streamed(plan) == [(i,) for i in range(30)] and not plan.head_resident
    plan = plan_and_check(layout, PlanningContext(256 * MiB))
    assert plan.groups[0] == LayerGroup(tuple(range(15)), resident=True)
    plan = plan_and_check(layout, PlanningContext(1024 * MiB))
    assert plan.head_resident and not plan.prefetch


def test_a_layer_bigger_than_half_the_budget_stands_alone() -> None:
    layout = handmade([1_000, 1_000, 60_000, 1_000, 1_000], head_bytes=4_000)
    ctx = with_room(layout, 64_000)
    plan = plan_and_check(layout, ctx)
    assert (ctx.budget_bytes or 0) // 2 < 60_000
    assert plan.prefetch
    assert plan.groups == (
        LayerGroup((0,), resident=True),
        LayerGroup((1,)),
        LayerGroup((2,)),
        LayerGroup((3, 4)),
    )
    assert not plan.head_resident and plan.head_slice_bytes == 4_000


def test_small_layers_merge_into_balanced_stages_beside_a_big_one() -> None:
    layout = handmade([10] * 40 + [300], head_bytes=0)
    ctx = with_room(layout, 600)
    plan = plan_and_check(layout, ctx)
    assert plan.groups[0] == LayerGroup(tuple(range(29)), resident=True)
    # the stages next to the 300-byte layer (also across the wrap) stay at one small layer
    assert streamed(plan) == [(29,), tuple(range(30, 39)), (39,), (40,)]
    assert_balanced(plan, layout, ctx)


def test_many_tiny_layers() -> None:
    layout = handmade([100] * 500, head_bytes=1_000)
    ctx = with_room(layout, 20_000)
    plan = plan_and_check(layout, ctx)
    # 188 resident layers and the head leave 200 bytes: two one-layer stages side by side
    assert plan.prefetch and plan.head_resident
    assert plan.groups[0] == LayerGroup(tuple(range(188)), resident=True)
    assert streamed(plan) == [(i,) for i in range(188, 500)]
    assert window(plan, layout, ctx) == 200


def test_many_tiny_layers_no_room_to_spare() -> None:
    layout = handmade([100] * 500, head_bytes=1_000)
    ctx = small_ctx(prefetch_minimum(layout, small_ctx(None)))
    plan = plan_and_check(layout, ctx)
    assert streamed(plan) == [(i,) for i in range(500)]
    assert plan.predicted_peak_bytes == ctx.budget_bytes


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
        assert_balanced(plan, layout, ctx)
