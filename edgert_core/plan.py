"""Execution plans: how a model's layers are split into groups under a memory budget.

The memory model (one rule, used by every strategy and by the validator):

* **Fixed bytes** are held for the whole run: the KV cache for ``max_context`` tokens at the
  context's ``kv_cache`` precision (:func:`kv_cache_bytes`; for ``f16`` and ``q8_0`` also the fp32
  scratch attention reads one layer from, :func:`kv_scratch_bytes`), the activations of one
  prefill chunk (``prefill_chunk`` tokens through one layer, attention scores of the chunk against
  the whole context, the residual stream of the whole context) and one row of logits, the chunk's
  activations and the logits counted twice (the backends' temporaries: the numpy backend's MLP and
  the head's slices hold several at once), and :data:`RUN_ALLOWANCE_BYTES`.
* **Resident bytes** are the weights of groups marked ``resident`` (and the head when
  ``head_resident``); they are loaded once and kept.
* **Streamed stages** are the other groups in order, then the head in slices of at most
  ``head_slice_bytes``; each stage is loaded into a *stage slot*, computed and released. Stages wrap
  around: after the head comes the next token's first group. A plan's ``stage_bytes`` (0: off) splits
  each streamed group into stages of at most that many bytes, cut between the
  :data:`~edgert_core.layout.BLOCK_PARTS` of its layers (a part larger than ``stage_bytes`` is a stage
  of its own); small stages stay in the CPU's cache between the load and the compute.
* **Stage slots** are as large as the largest stage. Without ``prefetch`` there is one; with
  ``prefetch`` a background thread loads up to :data:`PREFETCH_DEPTH` stages ahead while the current
  one computes, so there is one slot more per stage ahead (no more slots than streamed stages).

``predicted_peak = fixed + resident + slots * max(stage)``.
Embedding tables are looked up by row and count only through the activations.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import ClassVar

from edgert_core.budget import format_bytes
from edgert_core.errors import InfeasibleBudgetError, PlanValidationError
from edgert_core.layout import FP32_BYTES, ModelLayout
from edgert_core.models import kv_quant

DEFAULT_MAX_CONTEXT = 512
DEFAULT_PREFILL_CHUNK = 64
DEFAULT_STAGE_BYTES = 4 * 2**20
"""The stage size a strategy uses when it streams in small stages: a prefetched stage and the ones
beside it stay in a last-level cache of a few MiB between the load and the compute (on the reference
x86 machine, 4 MiB stages load and compute about 1.5x faster than 13.5 MiB layers)."""

RUN_ALLOWANCE_BYTES = 2 * 2**20
"""What a run allocates outside the pool whatever the model, held for the whole run: Python objects
made as it goes, a thread's malloc arena. Measured as OS-read RSS over the pool's own bytes (peak
less baseline, less what the pool held): 1.6 MiB for a model of a few KiB (``tiny_llama``); on
SmolLM2 (numpy and neon backends, several strategies, prompts of 4 to 60 tokens) 1.6-4.2 MiB, of
which the activations and logits counted once covered 0.4-1.9 MiB. A context the prompt does not fill
hides such a gap behind the KV cache's untouched pages; a full one does not."""

PREFETCH_DEPTH = 2
"""How many stages a prefetching plan loads ahead of the one computing (one prefetch thread loads
them in order, so it never waits for the compute to free a slot)."""


@dataclass(frozen=True)
class PlanningContext:
    """What a plan is made for: a budget in bytes (``None``: no budget), the run's token limits,
    the stage size for strategies that stream in small stages and the KV cache's precision (one of
    :data:`~edgert_core.models.kv_quant.KV_CACHE_MODES`; an unknown one is an
    :class:`~edgert_core.errors.UnknownNameError`)."""

    budget_bytes: int | None
    max_context: int = DEFAULT_MAX_CONTEXT
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    stage_bytes: int = DEFAULT_STAGE_BYTES
    kv_cache: str = kv_quant.DEFAULT_KV_CACHE
    #: The device's room for the run's pool and page cache together (a memory limit's, margin off;
    #: ``None``: no limit), its measured disk read bandwidth and the read mode that reached it
    #: (:mod:`edgert_core.memory.bandwidth`): ``auto`` ranks plans by their time on the device
    #: (:mod:`edgert_core.device_cost`) and the engine streams from disk in that mode.
    room_bytes: int | None = None
    disk_bytes_per_s: float | None = None
    disk_read_mode: str | None = None

    def __post_init__(self) -> None:
        if self.max_context <= 0 or self.prefill_chunk <= 0 or self.stage_bytes <= 0:
            raise ValueError("max_context, prefill_chunk and stage_bytes must be positive")
        kv_quant.check_mode(self.kv_cache)


@dataclass(frozen=True)
class LayerGroup:
    """Consecutive layers loaded and released together; ``resident`` groups are loaded once."""

    layers: tuple[int, ...]
    resident: bool = False


@dataclass(frozen=True)
class ExecutionPlan:
    """Ordered groups of consecutive layers, with the core's prediction of peak bytes.

    Make one with :func:`make_plan`, which computes ``predicted_peak_bytes`` by the module's rule.
    ``stage_bytes`` 0 loads each streamed group as one stage.
    """

    strategy: str
    groups: tuple[LayerGroup, ...]
    prefetch: bool
    head_resident: bool
    head_slice_bytes: int
    predicted_peak_bytes: int
    stage_bytes: int = 0

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def resident_bytes(self, layout: ModelLayout) -> int:
        """Weights kept in memory for the whole run."""
        sizes = layout.layer_bytes
        total = sum(sizes[i] for g in self.groups if g.resident for i in g.layers)
        return total + (layout.head_bytes if self.head_resident else 0)

    def loads_per_token(self, layout: ModelLayout) -> int:
        """How many loads a forward pass makes: streamed stages plus head slices."""
        return len(streamed_stages(layout, self.groups, self.head_resident, self.head_slice_bytes,
                                   self.stage_bytes))

    def stage_slots(self, layout: ModelLayout) -> int:
        """How many streamed stages are in memory at once (see the module docstring)."""
        return slots_for(self.loads_per_token(layout), self.prefetch)

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


def kv_cache_bytes(layout: ModelLayout, ctx: PlanningContext) -> int:
    """Bytes of the stored K and V of every layer for ``max_context`` tokens at ``ctx.kv_cache``
    (what the engine's ``KV cache`` pool block holds). A setting the model cannot use (``q8_0`` with
    a ``head_dim`` not a multiple of 32) is a :class:`~edgert_core.errors.ModelError`."""
    d = layout.dims
    row = kv_quant.row_bytes(ctx.kv_cache, d.head_dim)
    return 2 * d.n_layers * d.n_kv_heads * ctx.max_context * row


def kv_scratch_bytes(layout: ModelLayout, ctx: PlanningContext) -> int:
    """Bytes of the fp32 scratch that ``f16``/``q8_0`` caches dequantize one layer into for
    attention: one layer's K and V at ``max_context`` (0 for ``f32``, which is read in place)."""
    if ctx.kv_cache == "f32":
        return 0
    d = layout.dims
    return 2 * d.n_kv_heads * ctx.max_context * d.head_dim * FP32_BYTES


def fixed_bytes(layout: ModelLayout, ctx: PlanningContext) -> int:
    """KV cache, activations and logits held for the whole run (see the module docstring)."""
    d = layout.dims
    chunk = min(ctx.prefill_chunk, ctx.max_context)
    kv = kv_cache_bytes(layout, ctx) + kv_scratch_bytes(layout, ctx)
    acts = layout.activation_bytes_per_token * chunk
    scores = d.n_heads * chunk * ctx.max_context * FP32_BYTES
    residual = d.hidden * ctx.max_context * FP32_BYTES
    logits = d.vocab * FP32_BYTES
    return kv + 2 * acts + scores + residual + 2 * logits + RUN_ALLOWANCE_BYTES


def head_slices(head_bytes: int, slice_bytes: int, rows: int) -> list[int]:
    """Sizes of the head's streamed slices: slices of whole rows of the output projection (``rows``
    of them), so never more slices than rows."""
    if head_bytes == 0:
        return []
    n = max(1, min(math.ceil(head_bytes / slice_bytes), rows))
    return [head_bytes // n + (1 if i < head_bytes % n else 0) for i in range(n)]


def group_stages(
    layout: ModelLayout, layers: Sequence[int], stage_bytes: int
) -> list[list[tuple[int, int]]]:
    """A streamed group's stages: each a list of ``(layer, part)`` (an index into
    :data:`~edgert_core.layout.BLOCK_PARTS`) in execution order. ``stage_bytes`` 0: one stage of
    every part; otherwise consecutive parts while they add up to at most ``stage_bytes``."""
    parts = [(i, p, b) for i in layers for p, b in enumerate(layout.part_bytes[i])]
    if not stage_bytes:
        return [[(i, p) for i, p, _ in parts]] if parts else []
    stages: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    size = 0
    for i, p, b in parts:
        if current and size + b > stage_bytes:
            stages.append(current)
            current, size = [], 0
        current.append((i, p))
        size += b
    if current:
        stages.append(current)
    return stages


def streamed_stages(
    layout: ModelLayout,
    groups: Sequence[LayerGroup],
    head_resident: bool,
    head_slice_bytes: int,
    stage_bytes: int = 0,
) -> list[int]:
    """Bytes of each stage that is loaded and released, in execution order."""
    sizes = layout.part_bytes
    stages: list[int] = []
    for g in groups:
        if g.resident:
            continue
        for stage in group_stages(layout, g.layers, stage_bytes):
            stages.append(sum(sizes[i][p] for i, p in stage))
    if not head_resident:
        stages += head_slices(layout.head_bytes, head_slice_bytes, layout.dims.vocab)
    return stages


def slots_for(n_stages: int, prefetch: bool) -> int:
    """Stage slots for ``n_stages`` streamed stages per token: the one computing plus, with
    prefetch, up to :data:`PREFETCH_DEPTH` loading ahead."""
    if n_stages == 0:
        return 0
    return 1 + (min(PREFETCH_DEPTH, n_stages - 1) if prefetch else 0)


def predict_peak(
    layout: ModelLayout,
    ctx: PlanningContext,
    groups: Sequence[LayerGroup],
    *,
    prefetch: bool,
    head_resident: bool,
    head_slice_bytes: int,
    stage_bytes: int = 0,
) -> int:
    """Peak bytes of a plan by the module's rule."""
    sizes = layout.layer_bytes
    resident = sum(sizes[i] for g in groups if g.resident for i in g.layers)
    if head_resident:
        resident += layout.head_bytes
    stages = streamed_stages(layout, groups, head_resident, head_slice_bytes, stage_bytes)
    working = slots_for(len(stages), prefetch) * max(stages, default=0)
    return fixed_bytes(layout, ctx) + resident + working


def default_head_slice(layout: ModelLayout, stage_bytes: int = 0) -> int:
    """The head is sliced into pieces no larger than ``stage_bytes`` if set, else than the largest
    layer."""
    if stage_bytes:
        return stage_bytes
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
    stage_bytes: int = 0,
) -> ExecutionPlan:
    """Build an :class:`ExecutionPlan` with its predicted peak computed by the core's rule.
    ``stage_bytes`` (0: off) loads streamed groups in stages of at most that many bytes, cut between
    block parts; the head's default slices are then that size too."""
    if stage_bytes < 0:
        raise ValueError("stage_bytes must be 0 (off) or positive")
    slice_bytes = head_slice_bytes
    if slice_bytes is None:
        slice_bytes = default_head_slice(layout, stage_bytes)
    if head_resident:
        slice_bytes = 0
    peak = predict_peak(
        layout,
        ctx,
        groups,
        prefetch=prefetch,
        head_resident=head_resident,
        head_slice_bytes=slice_bytes,
        stage_bytes=stage_bytes,
    )
    return ExecutionPlan(
        strategy=strategy,
        groups=tuple(groups),
        prefetch=prefetch,
        head_resident=head_resident,
        head_slice_bytes=slice_bytes,
        predicted_peak_bytes=peak,
        stage_bytes=stage_bytes,
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
        smaller = kv_quant.KV_CACHE_MODES[kv_quant.KV_CACHE_MODES.index(ctx.kv_cache) + 1:]
        if ctx.kv_cache != "q8_0" and layout.dims.head_dim % kv_quant.QK8_0:
            smaller = tuple(m for m in smaller if m != "q8_0")
        kv_hint = f", lower --max-context or store the KV cache smaller (--kv-cache " \
                  f"{' or '.join(smaller)})" if smaller else " or lower --max-context"
        raise InfeasibleBudgetError(
            f"A memory budget of {format_bytes(ctx.budget_bytes)} is too small for {layout.name} "
            f"with a context of {ctx.max_context} tokens and a {ctx.kv_cache} KV cache: the "
            f"smallest feasible budget is {format_bytes(minimum)} ({minimum} bytes). Raise "
            f"--memory-budget{kv_hint}.",
            minimum_bytes=minimum,
        )


def validate_plan(plan: ExecutionPlan, layout: ModelLayout, ctx: PlanningContext) -> None:
    """Check a strategy's plan: every layer exactly once and in order, consecutive groups, a correct
    peak prediction within the budget (prefetch headroom included)."""

    def fail(why: str) -> PlanValidationError:
        name = getattr(plan, "strategy", "?")
        return PlanValidationError(f"Strategy {name!r} returned an invalid plan: {why}.")

    if not isinstance(plan, ExecutionPlan):
        raise fail(f"it is a {type(plan).__name__}, not an ExecutionPlan; build plans with "
                   "edgert_core.plugin_api.make_plan")
    if not isinstance(plan.groups, tuple) or not all(isinstance(g, LayerGroup) for g in plan.groups):
        raise fail("groups must be a tuple of LayerGroup; build plans with "
                   "edgert_core.plugin_api.make_plan")
    for g in plan.groups:
        if not isinstance(g.layers, (tuple, list)) or not all(
            isinstance(i, Integral) and not isinstance(i, bool) for i in g.layers
        ):
            raise fail(f"a group's layers must be a tuple of layer indices (ints), got {g.layers!r}")
    flags = {"prefetch": plan.prefetch, "head_resident": plan.head_resident}
    flags.update({f"group {k} resident": g.resident for k, g in enumerate(plan.groups)})
    for what, flag in flags.items():
        if not isinstance(flag, bool):
            raise fail(f"{what} must be True or False, got {flag!r}")
    for what, value in (("head_slice_bytes", plan.head_slice_bytes),
                        ("stage_bytes", plan.stage_bytes),
                        ("predicted_peak_bytes", plan.predicted_peak_bytes)):
        if not isinstance(value, Integral) or isinstance(value, bool):
            raise fail(f"{what} must be an int, got {value!r}")
    order = [i for g in plan.groups for i in g.layers]
    if order != list(range(len(layout.layers))):
        raise fail(
            f"layers must appear exactly once and in order 0..{len(layout.layers) - 1}, got {order}"
        )
    if any(not g.layers for g in plan.groups):
        raise fail("a group has no layers")
    if not plan.head_resident and layout.head_bytes and plan.head_slice_bytes <= 0:
        raise fail("the head is streamed but head_slice_bytes is not positive")
    if plan.stage_bytes < 0:
        raise fail("stage_bytes is negative")
    peak = predict_peak(
        layout,
        ctx,
        plan.groups,
        prefetch=plan.prefetch,
        head_resident=plan.head_resident,
        head_slice_bytes=plan.head_slice_bytes,
        stage_bytes=plan.stage_bytes,
    )
    if plan.predicted_peak_bytes != peak:
        raise fail(
            f"it predicts a peak of {plan.predicted_peak_bytes} bytes where the core's rule gives "
            f"{peak}; build plans with edgert_core.plugin_api.make_plan"
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
