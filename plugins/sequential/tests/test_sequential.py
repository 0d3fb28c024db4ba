"""The sequential strategy on synthetic and hand-made layouts, directly and through the registry."""

from __future__ import annotations

import pytest
from edgert_sequential import SequentialStrategy

from edgert_core import (
    InfeasibleBudgetError,
    PlanningContext,
    format_bytes,
    load_registry,
    plan_with,
    synthetic_layout,
)
from edgert_core.plugin_api import fixed_bytes, minimum_budget, validate_plan
from edgert_core.testing import handmade_layout as handmade
from edgert_core.testing import small_context as small_ctx

MiB = 1024**2


@pytest.mark.parametrize("shape", ["smollm2-135m", "gpt2-small"])
@pytest.mark.parametrize("budget", [None, 64 * MiB, 128 * MiB, 256 * MiB, 1024 * MiB])
def test_one_layer_per_group_at_the_minimum_peak(shape: str, budget: int | None) -> None:
    layout = synthetic_layout(shape)
    ctx = PlanningContext(budget)
    if budget is not None and budget < minimum_budget(layout, ctx):  # gpt2-small at 64M
        with pytest.raises(InfeasibleBudgetError):
            SequentialStrategy().plan(layout, ctx)
        return
    plan = SequentialStrategy().plan(layout, ctx)
    validate_plan(plan, layout, ctx)
    assert [g.layers for g in plan.groups] == [(i,) for i in range(len(layout.layers))]
    assert not any(g.resident for g in plan.groups)
    assert not plan.prefetch and not plan.head_resident
    assert plan.head_slice_bytes == max(layout.layer_bytes)
    assert plan.predicted_peak_bytes == minimum_budget(layout, ctx)
    assert plan.streamed_bytes_per_token(layout) == sum(layout.layer_bytes) + layout.head_bytes


@pytest.mark.parametrize("shape", ["smollm2-135m", "gpt2-small"])
def test_budget_exactly_at_the_minimum_fits(shape: str) -> None:
    layout = synthetic_layout(shape)
    minimum = minimum_budget(layout, PlanningContext(None))
    ctx = PlanningContext(minimum)
    plan = SequentialStrategy().plan(layout, ctx)
    validate_plan(plan, layout, ctx)
    assert plan.predicted_peak_bytes == minimum


@pytest.mark.parametrize("shape", ["smollm2-135m", "gpt2-small"])
def test_one_byte_below_the_minimum_states_it(shape: str) -> None:
    layout = synthetic_layout(shape)
    minimum = minimum_budget(layout, PlanningContext(None))
    with pytest.raises(InfeasibleBudgetError) as info:
        SequentialStrategy().plan(layout, PlanningContext(minimum - 1))
    assert info.value.minimum_bytes == minimum
    assert str(minimum) in str(info.value)
    assert format_bytes(minimum) in str(info.value)


def test_a_layer_bigger_than_half_the_budget() -> None:
    layout = handmade([10, 90_000, 10], head_bytes=50)
    ctx = small_ctx(None)
    minimum = minimum_budget(layout, ctx)
    ctx = small_ctx(minimum)
    plan = SequentialStrategy().plan(layout, ctx)
    validate_plan(plan, layout, ctx)
    assert ((ctx.budget_bytes or 0) - fixed_bytes(layout, ctx)) // 2 < 90_000  # the layers' room
    assert plan.groups[1].layers == (1,)


def test_many_tiny_layers() -> None:
    layout = handmade([64] * 500, head_bytes=6400)
    ctx = small_ctx(minimum_budget(layout, small_ctx(None)))
    plan = SequentialStrategy().plan(layout, ctx)
    validate_plan(plan, layout, ctx)
    assert plan.n_groups == 500
    # the head streams in slices no larger than a layer: 100 slices of 64 bytes
    assert plan.head_slice_bytes == 64


def test_one_layer() -> None:
    layout = handmade([1000], head_bytes=3000)
    ctx = small_ctx(minimum_budget(layout, small_ctx(None)))
    plan = SequentialStrategy().plan(layout, ctx)
    validate_plan(plan, layout, ctx)
    assert [g.layers for g in plan.groups] == [(0,)]


def test_registered_through_its_entry_point() -> None:
    registry = load_registry()
    assert "sequential" in registry.names("strategy")
    provider = registry.provider("strategy", "sequential")
    assert (provider.name, provider.distribution) == ("sequential", "edgert-sequential")
    assert provider.errors == []
    layout = synthetic_layout("smollm2-135m")
    ctx = PlanningContext(64 * MiB)
    plan = plan_with(registry, "sequential", layout, ctx)
    assert plan.strategy == "sequential"
    assert plan.predicted_peak_bytes == minimum_budget(layout, ctx)


def test_through_the_registry_below_the_minimum() -> None:
    layout = synthetic_layout("gpt2-small")
    minimum = minimum_budget(layout, PlanningContext(None))
    with pytest.raises(InfeasibleBudgetError, match=str(minimum)):
        plan_with(load_registry(), "sequential", layout, PlanningContext(minimum - 1))
