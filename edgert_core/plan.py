"""Execution plans: how a model's layers are split into groups under a memory budget.

The memory model (one rule, used by every strategy and by the validator):

* **Fixed bytes** are held for the whole run: the fp32 KV cache for ``max_context`` tokens, the
  activations of one prefill chunk (``prefill_chunk`` tokens through one layer, attention scores of the
  chunk against the whole context, the residual stream of the whole context) and one row of logits.
* **Resident bytes** are the weights of groups marked ``resident`` (and the head when
  ``head_resident``); they are loaded once and kept.
* **Streamed stages** are the other groups in order, then the head in slices of at most
  ``head_slice_bytes``; each stage is loaded, computed and released. Stages wrap around: after the head
  comes the next token's first group. With ``prefetch`` the next stage loads while the current one
  computes, so two consecutive stages are in memory at once.

``predicted_peak = fixed + resident + max(stage[i] + (stage[i+1] if prefetch else 0))``.
Embedding tables are looked up by row and count only through the activations.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from edgert_core.budget import format_bytes
from edgert_core.errors import InfeasibleBudgetError, PlanValidationError
from edgert_core.layout import FP32_BYTES, ModelLayout

DEFAULT_MAX_CONTEXT = 512
DEFAULT_PREFILL_CHUNK = 64


@dataclass(frozen=True)
class PlanningContext:
    """What a plan is made for: a budget in bytes (``None``: no budget) and the run's token limits."""

    budget_bytes: int | None
    max_context: int = DEFAULT_MAX_CONTEXT
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK

    def __post_init__(self) -> None:
        if self.max_context <= 0 or self.prefill_chunk <= 0:
            raise ValueError("max_context and prefill_chunk must be positive")


@dataclass(frozen=True)
class LayerGroup:
    """Consecutive layers loaded and released together; ``resident`` groups are loaded once."""

    layers: tuple[int, ...]
    resident: bool = False


@dataclass(frozen=True)
class ExecutionPlan:
    """Ordered groups of consecutive layers, with the core's prediction of peak bytes.

    Make one with :func:`make_plan`, which computes ``predicted_peak_bytes`` by the module's rule.
    """

    strategy: str
    groups: tuple[LayerGroup, ...]
    prefetch: bool
    head_resident: bool
    head_slice_bytes: int
    predicted_peak_bytes: int

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def resident_bytes(self, layout: ModelLayout) -> int:
        """Weights kept in memory for the whole run."""
        sizes = layout.layer_bytes
        total = sum(sizes[i] for g in self.groups if g.resident for i in g.layers)
        return total + (layout.head_bytes if self.head_resident else 0)

    def loads_per_token(self, layout: ModelLayout) -> int:
        """How many loads a forward pass makes: streamed groups plus head slices."""
        groups = sum(1 for g in self.groups if not g.resident)
        if self.head_resident or not layout.head_bytes:
            return groups
        return groups + math.ceil(layout.head_bytes / self.head_slice_bytes)

    def streamed_bytes_per_token(self, layout: ModelLayout) -> int:
        """Weight bytes loaded for every forward pass."""
        sizes = layout.layer_bytes
        total = sum(sizes[i] for g in self.groups if not g.resident for i in g.layers)
        return total + (0 if self.head_resident else layout.head_bytes)


#: Nominal speeds behind ``auto``'s estimate of time per token, measured on the reference x86 machine
#: with the numpy backend: prepared weights read from the page cache into pool buffers at about
#: 8 GB/s, and compute that goes through about 16 GB/s of fp32 weights (31 tok/s over 513 MB).
NOMINAL_LOAD_BYTES_PER_S = 8e9
NOMINAL_COMPUTE_BYTES_PER_S = 16e9


def estimated_seconds_per_token(
    plan: ExecutionPlan,
    layout: ModelLayout,
    *,
    load_bytes_per_s: float = NOMINAL_LOAD_BYTES_PER_S,
    compute_bytes_per_s: float = NOMINAL_COMPUTE_BYTES_PER_S,
) -> float:
    """A rough decode time per token: every weight is computed once; streamed weights are loaded
    once more, after the compute (no prefetch) or behind it (prefetch)."""
    compute = layout.total_weight_bytes / compute_bytes_per_s
    load = plan.streamed_bytes_per_token(layout) / load_bytes_per_s
    return max(load, compute) if plan.prefetch else load + compute


def fixed_bytes(layout: ModelLayout, ctx: PlanningContext) -> int:
    """KV cache, activations and logits held for the whole run (see the module docstring)."""
    d = layout.dims
    chunk = min(ctx.prefill_chunk, ctx.max_context)
    kv = layout.kv_bytes_per_token * ctx.max_context
    acts = layout.activation_bytes_per_token * chunk
    scores = d.n_heads * chunk * ctx.max_context * FP32_BYTES
    residual = d.hidden * ctx.max_context * FP32_BYTES
    logits = d.vocab * FP32_BYTES
    return kv + acts + scores + residual + logits


def head_slices(head_bytes: int, slice_bytes: int) -> list[int]:
    """Sizes of the head's streamed slices."""
    if head_bytes == 0:
        return []
    n = math.ceil(head_bytes / slice_bytes)
    return [head_bytes // n + (1 if i < head_bytes % n else 0) for i in range(n)]


def streamed_stages(
    layout: ModelLayout,
    groups: Sequence[LayerGroup],
    head_resident: bool,
    head_slice_bytes: int,
) -> list[int]:
    """Bytes of each stage that is loaded and released, in execution order."""
    sizes = layout.layer_bytes
    stages = [sum(sizes[i] for i in g.layers) for g in groups if not g.resident]
    if not head_resident:
        stages += head_slices(layout.head_bytes, head_slice_bytes)
    return stages


def predict_peak(
    layout: ModelLayout,
    ctx: PlanningContext,
    groups: Sequence[LayerGroup],
    *,
    prefetch: bool,
    head_resident: bool,
    head_slice_bytes: int,
) -> int:
    """Peak bytes of a plan by the module's rule."""
    sizes = layout.layer_bytes
    resident = sum(sizes[i] for g in groups if g.resident for i in g.layers)
    if head_resident:
        resident += layout.head_bytes
    stages = streamed_stages(layout, groups, head_resident, head_slice_bytes)
    working = 0
    for i, size in enumerate(stages):
        nxt = stages[(i + 1) % len(stages)] if prefetch and len(stages) > 1 else 0
        working = max(working, size + nxt)
    return fixed_bytes(layout, ctx) + resident + working


def default_head_slice(layout: ModelLayout) -> int:
    """The head is sliced into pieces no larger than the largest layer."""
    return max(max(layout.layer_bytes, default=1), 1)


def make_plan(
    strategy: str,
    layout: ModelLayout,
    ctx: PlanningContext,
    groups: Sequence[LayerGroup],
    *,
    prefetch: bool = False,
    head_resident: bool = False,
    head_slice_bytes: int | None = None,
) -> ExecutionPlan:
    """Build an :class:`ExecutionPlan` with its predicted peak computed by the core's rule."""
    slice_bytes = default_head_slice(layout) if head_slice_bytes is None else head_slice_bytes
    if head_resident:
        slice_bytes = 0
    peak = predict_peak(
        layout,
        ctx,
        groups,
        prefetch=prefetch,
        head_resident=head_resident,
        head_slice_bytes=slice_bytes,
    )
    return ExecutionPlan(
        strategy=strategy,
        groups=tuple(groups),
        prefetch=prefetch,
        head_resident=head_resident,
        head_slice_bytes=slice_bytes,
        predicted_peak_bytes=peak,
    )


def resident_prefix(k: int) -> list[LayerGroup]:
    """Layers ``0..k-1`` as one resident group (none when ``k`` is 0)."""
    return [LayerGroup(tuple(range(k)), resident=True)] if k else []


def streaming_rank(plan: ExecutionPlan, layout: ModelLayout) -> tuple[int, int, int]:
    """A key for choosing among candidate plans: fewest streamed bytes per token, then fewest
    loads, then the lowest peak."""
    return (
        plan.streamed_bytes_per_token(layout),
        plan.loads_per_token(layout),
        plan.predicted_peak_bytes,
    )


def largest_fitting(n: int, fits: Callable[[int], bool]) -> int | None:
    """The largest ``k`` in ``0..n`` with ``fits(k)``, for a ``fits`` that holds up to some ``k``
    and fails after it (bisection); ``None`` if ``fits(0)`` fails."""
    if not fits(0):
        return None
    lo, hi = 0, n  # fits(lo) holds; the answer is in lo..hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def minimum_budget(layout: ModelLayout, ctx: PlanningContext) -> int:
    """The smallest budget any plan can meet: one layer at a time, the head in slices no larger
    than the largest layer, no prefetch."""
    groups = [LayerGroup((i,)) for i in range(len(layout.layers))]
    return predict_peak(
        layout,
        ctx,
        groups,
        prefetch=False,
        head_resident=False,
        head_slice_bytes=default_head_slice(layout),
    )


def check_feasible(layout: ModelLayout, ctx: PlanningContext) -> None:
    """Raise :class:`InfeasibleBudgetError` stating the minimum when no plan can fit the budget."""
    if ctx.budget_bytes is None:
        return
    minimum = minimum_budget(layout, ctx)
    if ctx.budget_bytes < minimum:
        raise InfeasibleBudgetError(
            f"A memory budget of {format_bytes(ctx.budget_bytes)} is too small for {layout.name} "
            f"with a context of {ctx.max_context} tokens: the smallest feasible budget is "
            f"{format_bytes(minimum)} ({minimum} bytes). Raise --memory-budget or lower --max-context.",
            minimum_bytes=minimum,
        )


def validate_plan(plan: ExecutionPlan, layout: ModelLayout, ctx: PlanningContext) -> None:
    """Check a strategy's plan: every layer exactly once and in order, consecutive groups, a correct
    peak prediction within the budget (prefetch headroom included)."""

    def fail(why: str) -> PlanValidationError:
        return PlanValidationError(f"Strategy {plan.strategy!r} returned an invalid plan: {why}.")

    order = [i for g in plan.groups for i in g.layers]
    if order != list(range(len(layout.layers))):
        raise fail(
            f"layers must appear exactly once and in order 0..{len(layout.layers) - 1}, got {order}"
        )
    if any(not g.layers for g in plan.groups):
        raise fail("a group has no layers")
    if not plan.head_resident and layout.head_bytes and plan.head_slice_bytes <= 0:
        raise fail("the head is streamed but head_slice_bytes is not positive")
    peak = predict_peak(
        layout,
        ctx,
        plan.groups,
        prefetch=plan.prefetch,
        head_resident=plan.head_resident,
        head_slice_bytes=plan.head_slice_bytes,
    )
    if plan.predicted_peak_bytes != peak:
        raise fail(
            f"it predicts a peak of {plan.predicted_peak_bytes} bytes where the core's rule gives "
            f"{peak}; build plans with edgert_core.make_plan"
        )
    if ctx.budget_bytes is not None and peak > ctx.budget_bytes:
        raise fail(
            f"its predicted peak {format_bytes(peak)} exceeds the budget "
            f"{format_bytes(ctx.budget_bytes)}"
        )


class PartitionStrategy(ABC):
    """A partition strategy: turns a layout and a planning context into an :class:`ExecutionPlan`.

    Register the class through the ``edgert_register_strategies`` hook. ``name`` is what users type
    (``--strategy NAME``). ``plan`` may assume the budget is at least :func:`minimum_budget` (the core
    checks that first) and raises :class:`InfeasibleBudgetError` if it cannot fit anyway.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
        """Return a plan whose predicted peak is within ``ctx.budget_bytes`` (if set)."""
