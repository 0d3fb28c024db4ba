"""The core's memory rule for plans (``edgert_core.plan``), checked against sums done by hand."""

from __future__ import annotations

import pytest

from edgert_core import (
    ExecutionPlan,
    LayerGroup,
    PlanningContext,
    PlanValidationError,
    synthetic_layout,
)
from edgert_core.plan import RUN_ALLOWANCE_BYTES, head_slices
from edgert_core.plugin_api import (
    BLOCK_PARTS,
    PREFETCH_DEPTH,
    fixed_bytes,
    group_stages,
    make_plan,
    minimum_budget,
    predict_peak,
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
    # the chunk's activations and the logits counted twice (the backends' temporaries), and the
    # allowance for the interpreter's own allocations
    assert fixed_bytes(layout, ctx) == (kv + 2 * acts + scores + residual + 2 * logits
                                        + RUN_ALLOWANCE_BYTES) == 31_391_744


def test_prefill_chunk_is_capped_by_the_context() -> None:
    long_chunk = PlanningContext(None, max_context=8, prefill_chunk=64)
    assert fixed_bytes(LAYOUT, long_chunk) == fixed_bytes(LAYOUT, PlanningContext(None, 8, 8))


def test_fixed_bytes_of_the_handmade_layout() -> None:
    d = LAYOUT.dims
    kv = 2 * 3 * 1 * 4 * 4 * 8
    acts = (3 * 8 + (2 + 2) * 4 + 2 * 16) * 4 * 4
    assert kv + 2 * acts + d.n_heads * 4 * 8 * 4 + 8 * 8 * 4 + 2 * 32 * 4 + RUN_ALLOWANCE_BYTES == FIXED


def test_streamed_one_by_one_peaks_at_the_largest_stage() -> None:
    plan = make_plan("t", LAYOUT, CTX, SINGLES)
    assert plan.head_slice_bytes == 300  # default: the largest layer, so the head is one slice
    assert plan.predicted_peak_bytes == FIXED + 300
    assert plan.streamed_bytes_per_token(LAYOUT) == 850 and plan.resident_bytes(LAYOUT) == 0


def test_prefetch_charges_a_slot_per_stage_in_flight() -> None:
    plan = make_plan("t", LAYOUT, CTX, SINGLES, prefetch=True)
    # stages 100, 200, 300, head 250: the one computing and PREFETCH_DEPTH (2) ahead, each slot as
    # large as the largest stage
    assert PREFETCH_DEPTH == 2
    assert plan.predicted_peak_bytes == FIXED + 3 * 300
    assert plan.stage_slots(LAYOUT) == 3
    wrap = handmade([400, 10, 10], 50)
    peak = predict_peak(wrap, CTX, SINGLES, prefetch=True, head_resident=False,
                        head_slice_bytes=400)
    assert peak == fixed_bytes(wrap, CTX) + 3 * 400


def test_no_more_slots_than_streamed_stages() -> None:
    two = make_plan("t", LAYOUT, CTX, [LayerGroup((0, 1), resident=True), LayerGroup((2,))],
                    prefetch=True)
    assert two.loads_per_token(LAYOUT) == 2 and two.stage_slots(LAYOUT) == 2
    assert two.predicted_peak_bytes == FIXED + 300 + 2 * 300
    assert make_plan("t", LAYOUT, CTX, SINGLES).stage_slots(LAYOUT) == 1  # no prefetch: one slot


def test_head_slices_are_even_pieces() -> None:
    # 250 bytes in slices of at most 100 are 84, 83, 83 (not 100, 100, 50)
    everything = [LayerGroup((0, 1, 2), resident=True)]
    peak = predict_peak(LAYOUT, CTX, everything, prefetch=True, head_resident=False,
                        head_slice_bytes=100)
    assert peak == FIXED + 600 + 3 * 84
    peak = predict_peak(LAYOUT, CTX, everything, prefetch=False, head_resident=False,
                        head_slice_bytes=100)
    assert peak == FIXED + 600 + 84


def test_head_slices_are_whole_rows() -> None:
    # a slice is at least one row of the output projection: never more slices than rows
    assert head_slices(250, 100, rows=32) == [84, 83, 83]
    assert head_slices(3_200, 1, rows=32) == [100] * 32
    assert head_slices(0, 1, rows=32) == []
    assert len(head_slices(SMOL.head_bytes, 1, SMOL.dims.vocab)) == SMOL.dims.vocab


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
    with pytest.raises(ValueError):
        PlanningContext(None, stage_bytes=0)


# -- stages cut between block parts ---------------------------------------------------------------

SMOL = synthetic_layout("smollm2-135m")
MiB = 2**20


def test_smollm2_block_parts_by_hand() -> None:
    attention = 576 * 4 + (576 + 192 + 192) * 576 * 4 + 576 * 576 * 4
    mlp_in = 576 * 4 + 2 * 1536 * 576 * 4
    mlp_out = 576 * 1536 * 4
    assert SMOL.layers[3].part_bytes("llama") == (attention, mlp_in, mlp_out)
    assert sum((attention, mlp_in, mlp_out)) == SMOL.layer_bytes[3]
    assert [name for name, _ in BLOCK_PARTS["llama"]] == ["attention", "mlp_in", "mlp_out"]
    gpt2 = synthetic_layout("gpt2-small")
    assert sum(gpt2.layers[0].part_bytes("gpt2")) == gpt2.layer_bytes[0]


def test_group_stages_cut_between_parts() -> None:
    # 4 MiB: each part of about 3.4, 6.8 and 3.4 MiB is a stage (the middle one above the size)
    stages = group_stages(SMOL, (0, 1), 4 * MiB)
    assert stages == [[(0, 0)], [(0, 1)], [(0, 2)], [(1, 0)], [(1, 1)], [(1, 2)]]
    # 11 MiB: consecutive parts while they add up to at most that, across layers
    assert group_stages(SMOL, (0, 1), 11 * MiB) == [[(0, 0), (0, 1)], [(0, 2), (1, 0)],
                                                    [(1, 1), (1, 2)]]
    assert group_stages(SMOL, (0, 1), 0) == [[(i, p) for i in (0, 1) for p in range(3)]]


def test_stage_bytes_in_the_plan() -> None:
    groups = [LayerGroup(tuple(range(30)))]
    plan = make_plan("t", SMOL, PlanningContext(None), groups, prefetch=True, stage_bytes=4 * MiB)
    parts = SMOL.layers[0].part_bytes("llama")
    assert plan.stage_bytes == 4 * MiB and plan.head_slice_bytes == 4 * MiB  # the head's default
    head_slices = -(-SMOL.head_bytes // (4 * MiB))
    assert plan.loads_per_token(SMOL) == 30 * 3 + head_slices
    fixed = fixed_bytes(SMOL, PlanningContext(None))
    assert plan.predicted_peak_bytes == fixed + 3 * max(parts)
    whole = make_plan("t", SMOL, PlanningContext(None), groups, prefetch=True)
    assert whole.stage_bytes == 0 and whole.loads_per_token(SMOL) == 1 + -(-SMOL.head_bytes
                                                                           // max(SMOL.layer_bytes))
    with pytest.raises(ValueError, match="stage_bytes"):
        make_plan("t", SMOL, PlanningContext(None), groups, stage_bytes=-1)


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


def test_a_negative_stage_size_is_rejected() -> None:
    plan = make_plan("t", LAYOUT, CTX, SINGLES)
    broken = ExecutionPlan("bad", plan.groups, False, False, plan.head_slice_bytes,
                           plan.predicted_peak_bytes, stage_bytes=-5)
    with pytest.raises(PlanValidationError, match="stage_bytes is negative"):
        validate_plan(broken, LAYOUT, CTX)


def test_a_peak_not_from_the_core_rule_is_rejected() -> None:
    plan = make_plan("t", LAYOUT, CTX, SINGLES, prefetch=True)
    lied = ExecutionPlan("liar", plan.groups, True, False, plan.head_slice_bytes, FIXED + 300)
    with pytest.raises(PlanValidationError, match=r"'liar'.*core's rule gives"):
        validate_plan(lied, LAYOUT, CTX)


def test_largest_fitting_bisects_to_the_last_true() -> None:
    from edgert_core.plugin_api import largest_fitting

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


@pytest.mark.parametrize(
    ("broken", "says"),
    [
        ({"groups": [LayerGroup((0,)), LayerGroup((1, 2))]}, "groups must be a tuple"),
        ({"groups": (LayerGroup((0,)), LayerGroup(("1", 2)))},  # type: ignore[arg-type]
         "layers must be a tuple of layer indices"),
        ({"prefetch": "yes"}, "prefetch must be True or False"),
        ({"groups": (LayerGroup((0, 1, 2), resident=1),)},  # type: ignore[arg-type]
         "group 0 resident must be True or False"),
        ({"stage_bytes": 2.5}, "stage_bytes must be an int"),
    ],
)
def test_plans_of_the_wrong_types_are_refused_in_a_sentence(broken: dict[str, object], says: str) -> None:
    from dataclasses import replace

    plan = replace(make_plan("t", LAYOUT, CTX, SINGLES), **broken)  # type: ignore[arg-type]
    with pytest.raises(PlanValidationError, match=f"Strategy 't' returned an invalid plan: .*{says}"):
        validate_plan(plan, LAYOUT, CTX)


def test_something_that_is_not_a_plan_is_refused() -> None:
    with pytest.raises(PlanValidationError, match="not an ExecutionPlan; build plans with"):
        validate_plan([LayerGroup((0, 1, 2))], LAYOUT, CTX)  # type: ignore[arg-type]
