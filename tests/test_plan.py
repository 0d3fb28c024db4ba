"""The core's memory rule for plans (``edgert_core.plan``), checked against sums done by hand."""

from __future__ import annotations

import pytest

from edgert_core import (
    ExecutionPlan,
    LayerGroup,
    PlanningContext,
    PlanValidationError,
    fixed_bytes,
    make_plan,
    minimum_budget,
    predict_peak,
    synthetic_layout,
    validate_plan,
)
from edgert_core.testing import handmade_layout as handmade

LAYERS = [100, 200, 300]
HEAD = 250


CTX = PlanningContext(None, max_context=8, prefill_chunk=4)
LAYOUT = handmade(LAYERS, HEAD)
FIXED = fixed_bytes(LAYOUT, CTX)
SINGLES = [LayerGroup((0,)), LayerGroup((1,)), LayerGroup((2,))]


def test_fixed_bytes_of_smollm2_by_hand() -> None:
    layout = synthetic_layout("smollm2-135m")
    ctx = PlanningContext(None, max_context=512, prefill_chunk=64)
    kv = 2 * 30 * 3 * 64 * 4 * 512  # K and V, 30 layers, 3 kv heads of 64, fp32, 512 tokens
    acts = (3 * 576 + (9 + 2 * 3) * 64 + 2 * 1536) * 4 * 64  # one layer's activations, 64 tokens
    scores = 9 * 64 * 512 * 4  # 9 heads, 64 queries against 512 keys
    residual = 576 * 512 * 4
    logits = 49152 * 4
    assert fixed_bytes(layout, ctx) == kv + acts + scores + residual + logits == 27_623_424


def test_prefill_chunk_is_capped_by_the_context() -> None:
    long_chunk = PlanningContext(None, max_context=8, prefill_chunk=64)
    assert fixed_bytes(LAYOUT, long_chunk) == fixed_bytes(LAYOUT, PlanningContext(None, 8, 8))


def test_fixed_bytes_of_the_handmade_layout() -> None:
    d = LAYOUT.dims
    kv = 2 * 3 * 1 * 4 * 4 * 8
    acts = (3 * 8 + (2 + 2) * 4 + 2 * 16) * 4 * 4
    assert kv + acts + d.n_heads * 4 * 8 * 4 + 8 * 8 * 4 + 32 * 4 == FIXED


def test_streamed_one_by_one_peaks_at_the_largest_stage() -> None:
    plan = make_plan("t", LAYOUT, CTX, SINGLES)
    assert plan.head_slice_bytes == 300  # default: the largest layer, so the head is one slice
    assert plan.predicted_peak_bytes == FIXED + 300
    assert plan.streamed_bytes_per_token(LAYOUT) == 850 and plan.resident_bytes(LAYOUT) == 0


def test_prefetch_charges_two_consecutive_stages_with_wraparound() -> None:
    plan = make_plan("t", LAYOUT, CTX, SINGLES, prefetch=True)
    # stages 100, 200, 300, head 250 -> pairs 300, 500, 550, and 250 + 100 across the wrap
    assert plan.predicted_peak_bytes == FIXED + 550
    wrap = handmade([400, 10, 10], 50)
    peak = predict_peak(wrap, CTX, SINGLES, prefetch=True, head_resident=False,
                        head_slice_bytes=400)
    assert peak == fixed_bytes(wrap, CTX) + 450  # head 50 then the next token's layer 0 (400)


def test_head_slices_are_even_pieces() -> None:
    # 250 bytes in slices of at most 100 are 84, 83, 83 (not 100, 100, 50)
    everything = [LayerGroup((0, 1, 2), resident=True)]
    peak = predict_peak(LAYOUT, CTX, everything, prefetch=True, head_resident=False,
                        head_slice_bytes=100)
    assert peak == FIXED + 600 + 84 + 83
    peak = predict_peak(LAYOUT, CTX, everything, prefetch=False, head_resident=False,
                        head_slice_bytes=100)
    assert peak == FIXED + 600 + 84


def test_resident_groups_and_head_count_once() -> None:
    groups = [LayerGroup((0, 1), resident=True), LayerGroup((2,))]
    plan = make_plan("t", LAYOUT, CTX, groups, prefetch=True, head_resident=True)
    assert plan.head_slice_bytes == 0
    # a single streamed stage is not doubled by prefetch
    assert plan.predicted_peak_bytes == FIXED + 300 + HEAD + 300
    assert plan.resident_bytes(LAYOUT) == 550 and plan.streamed_bytes_per_token(LAYOUT) == 300
    everything = make_plan("t", LAYOUT, CTX, [LayerGroup((0, 1, 2), resident=True)],
                           head_resident=True)
    assert everything.predicted_peak_bytes == FIXED + 850
    assert everything.streamed_bytes_per_token(LAYOUT) == 0


def test_group_bytes_add_up() -> None:
    plan = make_plan("t", LAYOUT, CTX, [LayerGroup((0, 1)), LayerGroup((2,))])
    assert plan.predicted_peak_bytes == FIXED + 300
    plan = make_plan("t", LAYOUT, CTX, [LayerGroup((0, 1, 2))])
    assert plan.predicted_peak_bytes == FIXED + 600


def test_minimum_budget_is_one_layer_at_a_time() -> None:
    assert minimum_budget(LAYOUT, CTX) == FIXED + 300
    smol = synthetic_layout("smollm2-135m")
    ctx = PlanningContext(None)
    assert minimum_budget(smol, ctx) == fixed_bytes(smol, ctx) + max(smol.layer_bytes)


def test_a_model_without_head_bytes() -> None:
    layout = handmade([100, 100], 0)
    plan = make_plan("t", layout, CTX, [LayerGroup((0,)), LayerGroup((1,))], prefetch=True)
    assert plan.predicted_peak_bytes == fixed_bytes(layout, CTX) + 200
    validate_plan(plan, layout, CTX)


def test_context_rejects_non_positive_sizes() -> None:
    with pytest.raises(ValueError):
        PlanningContext(None, max_context=0)
    with pytest.raises(ValueError):
        PlanningContext(None, prefill_chunk=0)


# -- validation -------------------------------------------------------------------------------


def test_a_plan_exactly_at_the_budget_is_valid() -> None:
    ctx = PlanningContext(FIXED + 300, max_context=8, prefill_chunk=4)
    validate_plan(make_plan("t", LAYOUT, ctx, SINGLES), LAYOUT, ctx)
    tight = PlanningContext(FIXED + 299, max_context=8, prefill_chunk=4)
    with pytest.raises(PlanValidationError, match="exceeds the budget"):
        validate_plan(make_plan("t", LAYOUT, tight, SINGLES), LAYOUT, tight)


@pytest.mark.parametrize(
    "groups",
    [
        [LayerGroup((0,)), LayerGroup((2,))],  # a layer missing
        [LayerGroup((0, 1)), LayerGroup((1, 2))],  # a layer twice
        [LayerGroup((1,)), LayerGroup((0,)), LayerGroup((2,))],  # out of order
        [LayerGroup((0, 2, 1))],  # out of order inside a group
    ],
)
def test_every_layer_exactly_once_in_order(groups: list[LayerGroup]) -> None:
    plan = make_plan("bad", LAYOUT, CTX, groups)
    with pytest.raises(PlanValidationError, match=r"Strategy 'bad' .*exactly once and in order"):
        validate_plan(plan, LAYOUT, CTX)


def test_empty_group_is_rejected() -> None:
    plan = make_plan("bad", LAYOUT, CTX, [*SINGLES, LayerGroup(())])
    with pytest.raises(PlanValidationError, match="a group has no layers"):
        validate_plan(plan, LAYOUT, CTX)


def test_streamed_head_needs_a_positive_slice() -> None:
    plan = make_plan("t", LAYOUT, CTX, SINGLES)
    broken = ExecutionPlan("bad", plan.groups, False, False, 0, plan.predicted_peak_bytes)
    with pytest.raises(PlanValidationError, match="head_slice_bytes is not positive"):
        validate_plan(broken, LAYOUT, CTX)


def test_a_peak_not_from_the_core_rule_is_rejected() -> None:
    plan = make_plan("t", LAYOUT, CTX, SINGLES, prefetch=True)
    lied = ExecutionPlan("liar", plan.groups, True, False, plan.head_slice_bytes, FIXED + 300)
    with pytest.raises(PlanValidationError, match=r"'liar'.*core's rule gives"):
        validate_plan(lied, LAYOUT, CTX)


def test_largest_fitting_bisects_to_the_last_true() -> None:
    from edgert_core import largest_fitting

    assert largest_fitting(10, lambda k: k <= 7) == 7
    assert largest_fitting(10, lambda k: True) == 10
    assert largest_fitting(10, lambda k: k == 0) == 0
    assert largest_fitting(10, lambda k: False) is None


def test_loads_per_token_counts_streamed_groups_and_head_slices() -> None:
    groups = [LayerGroup((0,), resident=True), LayerGroup((1,)), LayerGroup((2,))]
    plan = make_plan("t", LAYOUT, CTX, groups, head_slice_bytes=100)
    assert plan.loads_per_token(LAYOUT) == 2 + 3  # head of 250 bytes in slices of at most 100
    resident = make_plan("t", LAYOUT, CTX, groups, head_resident=True)
    assert resident.loads_per_token(LAYOUT) == 2
