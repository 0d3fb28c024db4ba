"""The greedy-grouping strategy on synthetic and hand-made layouts, directly and through the
registry. The optimality checks compare against every prefix/head choice, built with make_plan."""

from __future__ import annotations

import itertools
import random

import pytest
from edgert_greedy import GreedyGroupingStrategy

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
from edgert_core.plugin_api import fixed_bytes, make_plan, minimum_budget, validate_plan
from edgert_core.testing import handmade_layout as handmade
from edgert_core.testing import small_context as small_ctx

MiB = 1024**2
SHAPES = ["smollm2-135m", "gpt2-small"]


def room(layout: ModelLayout, ctx: PlanningContext) -> int:
    """Bytes of the budget left for weights."""
    assert ctx.budget_bytes is not None
    return ctx.budget_bytes - fixed_bytes(layout, ctx)


def plan_and_check(layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
    plan = GreedyGroupingStrategy().plan(layout, ctx)
    validate_plan(plan, layout, ctx)
    assert plan.strategy == "greedy-grouping"
    assert not plan.prefetch
    return plan


def fewest_streamed_bytes(layout: ModelLayout, ctx: PlanningContext) -> int:
    """The fewest streamed bytes of any resident prefix and head choice that fits, streamed one
    layer at a time (brute force)."""
    n = len(layout.layers)
    best = None
    for head_resident in (False, True):
        for k in range(n + 1):
            groups = ([LayerGroup(tuple(range(k)), resident=True)] if k else [])
            groups += [LayerGroup((i,)) for i in range(k, n)]
            plan = make_plan("probe", layout, ctx, groups, head_resident=head_resident)
            assert ctx.budget_bytes is not None
            if plan.predicted_peak_bytes <= ctx.budget_bytes:
                streamed = plan.streamed_bytes_per_token(layout)
                best = streamed if best is None else min(best, streamed)
    assert best is not None
    return best


def assert_fewest_groups(plan: ExecutionPlan, layout: ModelLayout, ctx: PlanningContext) -> None:
    """No streamed group could take the next group's first layer without exceeding the window."""
    sizes = layout.layer_bytes
    window = room(layout, ctx) - plan.resident_bytes(layout)
    streamed = [g for g in plan.groups if not g.resident]
    for group, nxt in itertools.pairwise(streamed):
        assert sum(sizes[i] for i in group.layers) + sizes[nxt.layers[0]] > window
    for group in streamed:
        assert sum(sizes[i] for i in group.layers) <= window


@pytest.mark.parametrize("shape", SHAPES)
def test_no_budget_keeps_everything_resident(shape: str) -> None:
    layout = synthetic_layout(shape)
    plan = plan_and_check(layout, PlanningContext(None))
    assert plan.groups == (LayerGroup(tuple(range(len(layout.layers))), resident=True),)
    assert plan.head_resident
    assert plan.streamed_bytes_per_token(layout) == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_resident_exactly_when_everything_fits(shape: str) -> None:
    layout = synthetic_layout(shape)
    everything = plan_and_check(layout, PlanningContext(None)).predicted_peak_bytes
    assert plan_and_check(layout, PlanningContext(everything)).streamed_bytes_per_token(layout) == 0
    tight = PlanningContext(everything - 1)
    plan = plan_and_check(layout, tight)
    assert plan.streamed_bytes_per_token(layout) > 0
    assert plan.streamed_bytes_per_token(layout) == fewest_streamed_bytes(layout, tight)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mib", [64, 96, 128, 256, 384, 512])
def test_streams_the_fewest_bytes_in_the_fewest_groups(shape: str, mib: int) -> None:
    layout = synthetic_layout(shape)
    ctx = PlanningContext(mib * MiB)
    if ctx.budget_bytes is not None and ctx.budget_bytes < minimum_budget(layout, ctx):
        with pytest.raises(InfeasibleBudgetError):
            GreedyGroupingStrategy().plan(layout, ctx)
        return
    plan = plan_and_check(layout, ctx)
    assert plan.streamed_bytes_per_token(layout) == fewest_streamed_bytes(layout, ctx)
    resident = [g for g in plan.groups if g.resident]
    assert len(resident) <= 1 and (not resident or resident[0].layers[0] == 0)
    assert_fewest_groups(plan, layout, ctx)


def test_smollm2_at_256m_keeps_a_prefix_resident() -> None:
    layout = synthetic_layout("smollm2-135m")
    plan = plan_and_check(layout, PlanningContext(256 * MiB))
    # 15 of the 30 layers (13.5 MiB each, fp32) fit beside the fixed bytes of a 512-token context
    assert plan.groups[0] == LayerGroup(tuple(range(15)), resident=True)
    assert [g.layers for g in plan.groups[1:]] == [(i,) for i in range(15, 30)]
    assert not plan.head_resident


def test_smollm2_at_1g_is_resident() -> None:
    layout = synthetic_layout("smollm2-135m")
    plan = plan_and_check(layout, PlanningContext(1024 * MiB))
    assert plan.n_groups == 1 and plan.groups[0].resident and plan.head_resident


@pytest.mark.parametrize("shape", SHAPES)
def test_budget_exactly_at_the_minimum_streams_everything(shape: str) -> None:
    layout = synthetic_layout(shape)
    ctx = PlanningContext(minimum_budget(layout, PlanningContext(None)))
    plan = plan_and_check(layout, ctx)
    assert plan.predicted_peak_bytes == ctx.budget_bytes
    assert plan.streamed_bytes_per_token(layout) == sum(layout.layer_bytes) + layout.head_bytes


@pytest.mark.parametrize("shape", SHAPES)
def test_one_byte_below_the_minimum_states_it(shape: str) -> None:
    layout = synthetic_layout(shape)
    minimum = minimum_budget(layout, PlanningContext(None))
    with pytest.raises(InfeasibleBudgetError) as info:
        GreedyGroupingStrategy().plan(layout, PlanningContext(minimum - 1))
    assert info.value.minimum_bytes == minimum
    assert format_bytes(minimum) in str(info.value) and str(minimum) in str(info.value)


def test_a_layer_bigger_than_half_the_budget() -> None:
    # room 65_000: everything (72_000) does not fit; layer 0 resident beside the 60_000 layer
    layout = handmade([1_000, 60_000, 1_000], head_bytes=10_000)
    ctx = small_ctx(fixed_bytes(layout, small_ctx(None)) + 65_000)
    plan = plan_and_check(layout, ctx)
    room = (ctx.budget_bytes or 0) - fixed_bytes(layout, ctx)  # what the layers may take
    assert room // 2 < 60_000
    assert plan.groups == (LayerGroup((0,), resident=True), LayerGroup((1, 2)))
    assert not plan.head_resident
    assert plan.streamed_bytes_per_token(layout) == fewest_streamed_bytes(layout, ctx)


def test_small_layers_share_groups_beside_a_big_one() -> None:
    # the big last layer needs a 300-byte window; 30 small layers fit beside it resident
    layout = handmade([10] * 40 + [300], head_bytes=0)
    ctx = small_ctx(fixed_bytes(layout, small_ctx(None)) + 600)
    plan = plan_and_check(layout, ctx)
    assert plan.groups == (
        LayerGroup(tuple(range(30)), resident=True),
        LayerGroup(tuple(range(30, 40))),
        LayerGroup((40,)),
    )
    assert_fewest_groups(plan, layout, ctx)


def test_many_tiny_layers() -> None:
    layout = handmade([100] * 500, head_bytes=1_000)
    ctx = small_ctx(fixed_bytes(layout, small_ctx(None)) + 20_000)
    plan = plan_and_check(layout, ctx)
    assert plan.streamed_bytes_per_token(layout) == fewest_streamed_bytes(layout, ctx)
    # a resident head (1_000 bytes) ties with ten more resident layers: both stream 31_100 bytes
    # in 311 loads; the tie goes to the resident head
    assert plan.streamed_bytes_per_token(layout) == 31_100
    assert plan.head_resident
    assert plan.groups[0] == LayerGroup(tuple(range(189)), resident=True)
    assert plan.n_groups == 1 + 311
    assert_fewest_groups(plan, layout, ctx)


def test_many_tiny_layers_at_the_minimum() -> None:
    layout = handmade([100] * 500, head_bytes=1_000)
    ctx = small_ctx(minimum_budget(layout, small_ctx(None)))
    plan = plan_and_check(layout, ctx)
    assert plan.n_groups == 500 and not any(g.resident for g in plan.groups)


def test_one_layer() -> None:
    layout = handmade([1_000], head_bytes=3_000)
    fixed = fixed_bytes(layout, small_ctx(None))
    assert plan_and_check(layout, small_ctx(fixed + 4_000)).head_resident
    plan = plan_and_check(layout, small_ctx(fixed + 3_999))
    assert plan.groups == (LayerGroup((0,), resident=True),)
    assert not plan.head_resident and plan.head_slice_bytes == 2_999


def test_registered_through_its_entry_point() -> None:
    registry = load_registry()
    provider = registry.provider("strategy", "greedy-grouping")
    assert (provider.name, provider.distribution) == ("greedy", "edgert-greedy")
    layout = synthetic_layout("gpt2-small")
    ctx = PlanningContext(128 * MiB)
    plan = plan_with(registry, "greedy-grouping", layout, ctx)
    assert plan.strategy == "greedy-grouping"
    assert plan.predicted_peak_bytes <= 128 * MiB


def test_random_layouts_fit_and_stream_the_fewest_bytes() -> None:
    rng = random.Random(7)
    for _ in range(200):
        sizes = [rng.randint(0, 1_000) for _ in range(rng.randint(1, 10))]
        layout = handmade(sizes, head_bytes=rng.choice([0, rng.randint(1, 3_000)]))
        base = small_ctx(None)
        everything = fixed_bytes(layout, base) + sum(sizes) + layout.head_bytes
        ctx = small_ctx(rng.randint(minimum_budget(layout, base), everything))
        plan = plan_and_check(layout, ctx)
        assert plan.streamed_bytes_per_token(layout) == fewest_streamed_bytes(layout, ctx)
        assert_fewest_groups(plan, layout, ctx)
