"""The engine's three states, each made by the step before it: :class:`Engine` (a model and a
backend) -> :meth:`Engine.plan` -> :class:`PlannedEngine` -> :meth:`PlannedEngine.prepare` ->
:class:`ReadyEngine`, which runs forward passes (:meth:`ReadyEngine.forward`) until
:meth:`ReadyEngine.close`. See :mod:`edgert_core.engine` for what counts against the budget and how
the plan is walked."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from edgert_core.backends.base import KernelBackend, Weight
from edgert_core.budget import format_bytes
from edgert_core.device_cost import CACHED, DROP, device_cost
from edgert_core.engine.pipeline import EngineTimes, StagePipeline
from edgert_core.engine.stages import (
    LoadedStage,
    Stage,
    count_group_stages,
    make_stages,
    tensor_order,
)
from edgert_core.engine.tuning import ProcessTuning
from edgert_core.engine.weights import (
    READ_MODE_WATCH_TOKENS,
    WeightReader,
    WeightSource,
    open_weights,
    reads_say_drop,
)
from edgert_core.errors import EdgeRTError
from edgert_core.layout import ModelLayout
from edgert_core.loaders.base import ModelPart, ValidatedModel
from edgert_core.memory.auto_budget import room_under_limit
from edgert_core.memory.io_stats import read_bytes
from edgert_core.memory.pool import (
    PAGE_BYTES,
    POISON_BYTE,
    MemoryPool,
    PoolBuffer,
    block_bytes,
    pack_offsets,
)
from edgert_core.memory.reader import default_read_mode
from edgert_core.memory.rss import current_rss_bytes
from edgert_core.models.config import (
    layer_prefix,
    output_name,
    position_embedding_name,
    token_embedding_name,
)
from edgert_core.models.kv_cache import KVCache
from edgert_core.models.transformer import BlockState, LayerWeights, Transformer
from edgert_core.plan import (
    ExecutionPlan,
    PlanningContext,
    fixed_bytes,
    slots_for,
)

if TYPE_CHECKING:
    from edgert_core.plugins import PluginRegistry

F32 = NDArray[np.float32]


class EngineStateError(EdgeRTError):
    """An engine step was called on an object that was already consumed (or closed)."""


class _Step:
    """One state of the engine; :meth:`_consume` hands it on to the next state exactly once."""

    _consumed_by: str | None = None

    def _check(self, method: str) -> None:
        if self._consumed_by is not None:
            raise EngineStateError(
                f"Cannot call {type(self).__name__}.{method}(): this engine was already "
                f"{self._consumed_by}; use the object that call returned."
            )

    def _consume(self, method: str, done: str) -> None:
        self._check(method)
        self._consumed_by = done


# -- the three states -------------------------------------------------------------------------------


class Engine(_Step):
    """The idle engine: a validated model and a backend, no plan yet."""

    def __init__(self, model: ValidatedModel, backend: KernelBackend) -> None:
        self.model = model
        self.backend = backend
        self.layout = model.layout().with_memory_bytes(backend.weight_nbytes)

    def plan(
        self,
        context: PlanningContext,
        strategy: str | ExecutionPlan = "auto",
        registry: PluginRegistry | None = None,
    ) -> PlannedEngine:
        """Make (or take) the plan: ``strategy`` is a strategy name or ``auto`` (planned with the
        installed strategies of ``registry``), or a ready :class:`ExecutionPlan`."""
        self._check("plan")
        if isinstance(strategy, ExecutionPlan):
            plan = strategy
        else:
            from edgert_core.planner import plan_with
            from edgert_core.plugins import load_registry

            plan = plan_with(registry or load_registry(), strategy, self.layout, context)
        self._consume("plan", "planned (Engine.plan was called)")
        return PlannedEngine(self.model, self.backend, self.layout, plan, context)


class PlannedEngine(_Step):
    """A model with its plan; :meth:`prepare` makes the buffers and returns a :class:`ReadyEngine`."""

    def __init__(self, model: ValidatedModel, backend: KernelBackend, layout: ModelLayout,
                 plan: ExecutionPlan, context: PlanningContext) -> None:
        self.model = model
        self.backend = backend
        self.layout = layout
        self.plan = plan
        self.context = context

    def prepare(
        self,
        *,
        weight_cache: bool | None = None,
        notify: Callable[[str], None] | None = None,
        poison: bool = False,
        tune_process: bool = False,
    ) -> ReadyEngine:
        """Record the baseline RSS, make the pool, write the prepared-weights cache if it is needed
        and missing, allocate the KV cache and load the resident weights.

        ``weight_cache``: use the prepared-weights cache when the plan streams weights that need
        converting (default: unless ``EDGERT_WEIGHT_CACHE=0``). ``notify`` gets one-line messages for
        the user (the cache being written). ``tune_process``: change process-wide settings for
        speed and an RSS that follows the budget (malloc thresholds and the OS's peak-RSS counter,
        which stay; BLAS and kernel threads with prefetch, undone on close; the prefetch thread's
        priority): see :mod:`edgert_core.engine.tuning`. Off, the process is left as it was."""
        self._consume("prepare", "prepared (PlannedEngine.prepare was called)")
        return ReadyEngine(self, weight_cache=weight_cache, notify=notify, poison=poison,
                           tuning=ProcessTuning(tune_process))


class ReadyEngine(_Step):
    """Prepared buffers; :meth:`forward` runs the model (generation drives it through
    :func:`edgert_core.generate.generate_ids`). :meth:`close` gives every pool byte back, joins the
    prefetch thread and undoes the process tuning that can be undone."""

    def __init__(self, planned: PlannedEngine, *, weight_cache: bool | None,
                 notify: Callable[[str], None] | None, poison: bool,
                 tuning: ProcessTuning | None = None) -> None:
        self.model = planned.model
        self.backend = planned.backend
        self.layout = planned.layout
        self.plan = planned.plan
        self.context = planned.context
        self.config = self.model.config
        self.max_context = self.context.max_context
        self.transformer = Transformer(self.config, self.backend, self.max_context)
        self.cached_ids: list[int] = []  # the tokens whose K/V are in the cache, in order
        self.on_stage: Callable[[str, int], None] | None = None  # hook for monitors: (kind, index)
        self.times = EngineTimes()
        self._times_lock = threading.Lock()
        self._resident: dict[int, LoadedStage] = {}
        self._head: LoadedStage | None = None
        self._reservation: PoolBuffer | None = None
        self._kv_buffer: PoolBuffer | None = None
        self._kv_scratch: PoolBuffer | None = None
        self._slots: list[PoolBuffer] = []  # streamed stages load into these, in turn
        self.tuning = tuning if tuning is not None else ProcessTuning(False)

        peak_reset = self.tuning.before_baseline()
        self.baseline_rss_bytes = current_rss_bytes()  # just before the first weight is read
        # under a memory limit: the room for pool and page cache (margin off) and what the cgroup
        # holds now (anonymous memory, mapped files: the baseline a device's limit counts)
        device = room_under_limit(self.baseline_rss_bytes)
        self.room_bytes = None if device is None else device.usable_bytes
        self.baseline_held_bytes = None if device is None else device.held_bytes
        self.peak_scope = "window" if peak_reset else "process"
        self.pool = MemoryPool(self.context.budget_bytes, poison=poison)
        try:
            self.reader = open_weights(
                self.model, self.backend, self.layout, self.plan, self.pool,
                tensor_order(self.config, self.layout), weight_cache=weight_cache,
                budget_bytes=self.context.budget_bytes, notify=notify,
            )
            self.reader.pool = self.pool
            self._stages = make_stages(self.config, self.layout, self.plan, self.reader.forms)
            self._group_stages = count_group_stages(self.plan, self._stages)
            self._allocate()
            self._choose_read_mode()
        except BaseException:
            self._teardown()
            raise
        self._pipeline = StagePipeline(
            [s for s, resident in self._stages if not resident], self._slots, self._fill_slot,
            self._slot_views, self.plan.prefetch, self.times, self._times_lock,
            poison=self._poison_slot if poison else None,
            thread_setup=self.tuning.prefetch_thread_setup(),
        )
        if self._pipeline.prefetch:
            self.tuning.split_cores(self.backend)

    def _choose_read_mode(self) -> None:
        """How streamed weights are read: ``EDGERT_READ_MODE`` when set, else what the device cost
        of this plan says (:func:`~edgert_core.device_cost.device_cost`: ``drop`` where the plan and
        its streamed weights do not fit the room this process's memory limit leaves, measured
        before the first weight), with the first decoded tokens' disk reads watched where it keeps
        them ``cached`` under a limit (the kernel may still evict them: then ``drop``)."""
        self._streamed_per_token = self.plan.streamed_bytes_per_token(self.layout)
        self._watch_reads = 0
        self._reads_before: int | None = None
        if os.environ.get("EDGERT_READ_MODE", "").strip():
            mode, self.read_mode_reason = default_read_mode(), "EDGERT_READ_MODE"
            self.disk_bytes_per_token: int | None = None
        elif self.reader.source == "synthetic":
            mode, self.read_mode_reason = CACHED, "synthetic weights: nothing is read from a file"
            self.disk_bytes_per_token = 0
        else:
            cost = device_cost(self.plan, self.layout, self.room_bytes)
            mode, self.read_mode_reason = cost.read_mode, cost.reason
            if mode == DROP and self.context.disk_read_mode == "direct":
                mode = "direct"
                self.read_mode_reason += (" (O_DIRECT, which this disk serves faster than dropped "
                                          "reads: measured, edgert_core.memory.bandwidth)")
            self.disk_bytes_per_token = cost.disk_bytes_per_token
            if mode == CACHED and self._streamed_per_token and self.room_bytes is not None:
                self._watch_reads = READ_MODE_WATCH_TOKENS
        self.reader.set_read_mode(mode)
        self.read_mode = self.reader.read_mode()

    def _watch_disk_reads(self, tokens: int) -> None:
        """After a one-token forward, while watching: switch to ``drop`` when its streamed
        weights came from disk (:func:`~edgert_core.engine.weights.reads_say_drop`)."""
        now = read_bytes()
        before, self._reads_before = self._reads_before, now
        if tokens != 1 or before is None or now is None:
            return  # a prompt's pass, or the first token: no one-token figure yet
        self._watch_reads -= 1
        if reads_say_drop(now - before, self._streamed_per_token):
            self.reader.set_read_mode("drop")
            self.read_mode = self.reader.read_mode()
            self.read_mode_reason = (
                f"a decoded token read {format_bytes(now - before)} of its "
                f"{format_bytes(self._streamed_per_token)} streamed weights from disk: under the "
                "memory limit the page cache did not keep them, so each read's pages are dropped")
            self._watch_reads = 0

    # -- buffers ----------------------------------------------------------------------------------
    def _allocate(self) -> None:
        """The loader's scratch, the resident weights, the KV cache, the stage slots, and the
        activations' accounting block sized so the pool's peak equals the plan's predicted peak.

        The plan's rule counts weights, KV cache and activations; the loader's own buffers (its
        scratch, and the file bytes of a tensor prepared whole) come out of the activations' share:
        the scratch is sized to the room the plan leaves, and the accounting block leaves room for
        the largest temporary a streamed load takes (the reader's ``whole`` buffer). Resident weights
        load first, before the KV cache and the stage slots are held, so their loads' temporaries
        fit in the room those will take; that buffer goes back to the OS before the rest is
        allocated."""
        kv_mode = self.context.kv_cache
        kv_specs = [KVCache.store_spec(self.config.dims, self.max_context, kv_mode)]
        scratch_spec = KVCache.scratch_spec(self.config.dims, self.max_context, kv_mode)
        kv_held = block_bytes(pack_offsets(kv_specs)[1])
        if scratch_spec is not None:
            kv_held += block_bytes(pack_offsets([scratch_spec])[1])
        streamed = [s for s, resident in self._stages if not resident]
        slot_bytes = max((s.block_bytes for s in streamed), default=0)
        n_slots = slots_for(len(streamed), self.plan.prefetch)
        held = (kv_held + n_slots * slot_bytes
                + sum(s.block_bytes for s, resident in self._stages if resident))
        stream_temporary = self.reader.temporary_bytes([p for s in streamed for p in s.pieces])
        room = self.plan.predicted_peak_bytes - held - stream_temporary
        if self.reader.needs_scratch():
            self.reader.scratch = self.pool.allocate(
                self.reader.scratch_bytes(self.context.budget_bytes, room), label="loader scratch"
            )
        resident_temporary = self.reader.temporary_bytes(
            [p for s, resident in self._stages if resident for p in s.pieces])
        self._set_whole_buffer(resident_temporary, "resident loads")
        for stage, resident in self._stages:
            if resident:
                loaded = self._load_resident(stage)
                if stage.group is None:
                    self._head = loaded
                else:  # keyed by plan group, as forward looks it up
                    self._resident[stage.group] = loaded
        self._set_whole_buffer(0, "")
        self.pool.trim()  # the resident loads' temporaries go back to the OS
        # no huge pages: the cache is written a position at a time, and its RSS should grow with the
        # tokens cached, not jump to the whole cache on the first token
        self._kv_buffer = self.pool.allocate_many(kv_specs, label="KV cache", hugepages=False)
        scratch = None
        if scratch_spec is not None:  # one layer's fp32 K and V, rewritten for every layer
            self._kv_scratch = self.pool.allocate_many([scratch_spec], label="KV cache fp32 scratch",
                                                       hugepages=False)
            scratch = self._kv_scratch.array
        self.cache = KVCache(self.config, self.max_context, self._kv_buffer.array,
                             precision=kv_mode, scratch=scratch)
        del scratch
        for n in range(n_slots):
            self._slots.append(self.pool.allocate(slot_bytes, label=f"stage slot {n + 1}"))
        self._set_whole_buffer(stream_temporary, "streamed loads")
        fixed_acts = (fixed_bytes(self.layout, self.context) - self.cache.nbytes
                      - self.cache.scratch_nbytes)
        reserve = self.plan.predicted_peak_bytes - self.pool.held_bytes
        reserve = min(reserve, fixed_acts) // PAGE_BYTES * PAGE_BYTES
        self.activation_reserve_bytes = max(0, reserve)
        if reserve > 0:
            self._reservation = self.pool.allocate(reserve, label="activations (accounting)")

    def _set_whole_buffer(self, nbytes: int, purpose: str) -> None:
        """Give the reader a ``whole`` buffer of ``nbytes`` for tensors prepared whole (0: none)."""
        if self.reader.whole is not None:
            self.reader.whole.release()
            self.reader.whole = None
        if nbytes > 0:
            self.reader.whole = self.pool.allocate(nbytes, label=f"whole-tensor file bytes ({purpose})")

    # -- loading ----------------------------------------------------------------------------------
    def _stage_views(self, stage: Stage, weights: dict[str, Weight]) -> list[tuple[LayerWeights, int]]:
        """The block parts of ``stage`` as (layer weights, part index), fused where the backend can."""
        arch = self.config.architecture
        by_layer = {
            i: LayerWeights.from_named(
                arch, i, {n: w for n, w in weights.items() if n.startswith(layer_prefix(arch, i))},
                self.backend.fuse_rows,
            )
            for i in stage.layers
        }
        return [(by_layer[i], p) for i, p in stage.parts]

    def _load_resident(self, stage: Stage) -> LoadedStage:
        """A resident stage in a pool buffer of its own, kept for the run."""
        buffer = self.pool.allocate_many(stage.specs, label=stage.label)
        try:
            self.reader.fill_stage(stage, buffer.raw)
            weights = self.reader.stage_weights(stage, buffer.raw)
            parts = self._stage_views(stage, weights)
        except BaseException:
            buffer.release()
            raise
        return LoadedStage(stage, weights, parts, buffer.release)

    def _fill_slot(self, index: int, slot: int) -> None:
        try:
            self.reader.fill_stage(self._pipeline.stages[index], self._slots[slot].raw)
        except EdgeRTError as exc:
            # the user's error without the frames below, which hold views of the slot's memory (the
            # pool could not unmap it while the caller keeps the exception)
            raise exc.with_traceback(None) from None

    def _slot_views(self, index: int, slot: int) -> tuple[dict[str, Weight],
                                                         list[tuple[LayerWeights, int]]]:
        stage = self._pipeline.stages[index]
        weights = self.reader.stage_weights(stage, self._slots[slot].raw)
        return weights, self._stage_views(stage, weights)

    def _poison_slot(self, slot: int) -> None:
        self._slots[slot].raw.fill(POISON_BYTE)

    # -- embeddings ----------------------------------------------------------------------------------
    def _embedding_rows(self, ids: NDArray[np.int64]) -> F32:
        """Token embedding rows: float32 ``[T, hidden]``."""
        name = token_embedding_name(self.config.architecture)
        if self._head is not None and output_name(self.config) == name:
            return self.backend.rows(self._head.weights[name], ids)
        return self.backend.to_float(self.reader.rows(name, ids))

    def _position_rows(self, start: int, stop: int) -> F32 | None:
        name = position_embedding_name(self.config.architecture)
        if name is None:
            return None
        return self.backend.to_float(self.reader.rows(name, np.arange(start, stop, dtype=np.int64)))

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, ids: Sequence[int], start: int, *, all_logits: bool = False) -> F32:
        """Run tokens ``ids`` at positions ``start..start+T-1`` (the cache must hold ``0..start-1``).

        Returns float32 ``[T, vocab]`` logits if ``all_logits`` else ``[1, vocab]`` for the last token.
        """
        return self.run_part(ids, None, start, all_logits=all_logits)

    @property
    def part(self) -> ModelPart | None:
        """The layers of a bigger model this engine runs (``None``: the whole model)."""
        return self.model.part

    def run_part(self, ids: Sequence[int], hidden: F32 | None, start: int, *,
                 all_logits: bool = False) -> F32:
        """:meth:`forward` for an engine of a part of a model (:class:`ModelPart`), one stage of a
        pipeline: the part that embeds takes the tokens ``ids`` (``hidden`` ``None``); the others
        take the previous part's float32 ``[T, hidden]`` output as ``hidden`` (``ids`` still name
        the tokens, for :attr:`cached_ids`). The part with the head returns logits as
        :meth:`forward` does; the others return float32 ``[T, hidden]``, every position (the next
        part's KV cache needs them all)."""
        self._check("forward")
        arr = np.asarray(ids, dtype=np.int64)
        t = len(arr)
        compute = 0.0
        part = self.model.part
        if hidden is None:
            if part is not None and not part.embeds:
                raise ValueError(f"{self.model.name} starts at layer {part.first}: give it the "
                                 "previous part's hidden states, not token ids")
            x = self.transformer.embed(self._embedding_rows(arr),
                                       self._position_rows(start, start + t))
        else:
            if part is None or part.embeds or hidden.shape != (t, self.config.dims.hidden):
                raise ValueError("hidden states go only to a part after the first, one row per id")
            x = np.array(hidden, dtype=np.float32, copy=True)
        streamed = 0
        for gi, group in enumerate(self.plan.groups):
            if self.on_stage is not None:
                self.on_stage("group", gi)
            if group.resident:
                c0 = time.perf_counter()
                x = self.transformer.run_layers(self._resident[gi].layers, x, self.cache, start)
                compute += time.perf_counter() - c0
                continue
            state = BlockState(x)
            for _ in range(self._group_stages[gi]):
                loaded = self._pipeline.take(streamed)
                streamed += 1
                try:
                    c0 = time.perf_counter()
                    state = self.transformer.run_parts(loaded.parts, state, self.cache, start)
                    compute += time.perf_counter() - c0
                finally:
                    loaded.release()
                del loaded
            x = state.hidden
        if part is not None and not part.has_head:
            self._finish_pass(arr, start, compute)
            return x
        if self.on_stage is not None:
            self.on_stage("head", 0)
        h = x if all_logits else x[-1:]
        vocab = self.config.dims.vocab
        extra = None
        if h.shape[0] > 1:  # more logits rows than the plan's one: count them
            extra = self.pool.allocate(h.shape[0] * vocab * 4, label="logits of every position")
        try:
            logits = np.empty((h.shape[0], vocab), dtype=np.float32)
            c0 = time.perf_counter()
            if self._head is not None:
                normed = self.transformer.final_norm(h, self._head.weights)
                self.transformer.project(normed, self._head.weights[output_name(self.config)], logits)
                compute += time.perf_counter() - c0
            else:
                compute += time.perf_counter() - c0
                normed = None
                out = output_name(self.config)
                while streamed < len(self._pipeline.stages):
                    loaded = self._pipeline.take(streamed)
                    streamed += 1
                    try:
                        c0 = time.perf_counter()
                        if normed is None:
                            normed = self.transformer.final_norm(h, loaded.weights)
                        piece = next(p for p in loaded.stage.pieces if p.name == out)
                        assert piece.rows is not None
                        a, b = piece.rows
                        self.transformer.project(normed, loaded.weights[out], logits[:, a:b])
                        compute += time.perf_counter() - c0
                    finally:
                        loaded.release()
                    del loaded
        finally:
            if extra is not None:
                extra.release()
                # the pool caches a released block for reuse by its size; one per length asked for
                # would pile up, so this one-off block goes back at once
                self.pool.trim()
        self._finish_pass(arr, start, compute)
        return logits

    def _finish_pass(self, ids: NDArray[np.int64], start: int, compute: float) -> None:
        if self._watch_reads > 0:
            self._watch_disk_reads(len(ids))
        self.cache.length = start + len(ids)
        del self.cached_ids[start:]
        self.cached_ids.extend(int(i) for i in ids)
        with self._times_lock:
            self.times.compute += compute

    def end_of_step(self) -> None:
        """Give back a stage loaded ahead for a forward pass that will not come (end of a
        generation)."""
        self._pipeline.drain()

    # -- what generation reads -----------------------------------------------------------------------
    @property
    def vocab(self) -> int:
        return self.config.dims.vocab

    @property
    def pool_peak_bytes(self) -> int:
        return self.pool.peak_bytes

    @property
    def weight_source(self) -> WeightSource:
        return self.reader.source

    @property
    def prefetch(self) -> bool:
        return self._pipeline.prefetch

    @property
    def weight_cache_path(self) -> str | None:
        """The prepared-weights file the run reads (``None``: it reads the model file)."""
        return self.reader.cache_path

    @property
    def weight_cache_built(self) -> bool:
        """Whether preparing this engine wrote the prepared-weights file."""
        return self.reader.cache_built

    # -- closing -----------------------------------------------------------------------------------
    def _teardown(self) -> None:
        pipeline = getattr(self, "_pipeline", None)
        if pipeline is not None:
            pipeline.close()
        self.tuning.restore()
        for loaded in self._resident.values():
            loaded.release()
        self._resident = {}
        if self._head is not None:
            self._head.release()
            self._head = None
        cache = getattr(self, "cache", None)
        if cache is not None:
            cache.release()
        reader: WeightReader | None = getattr(self, "reader", None)
        for buf in (self._kv_buffer, self._kv_scratch, self._reservation,
                    None if reader is None else reader.scratch,
                    None if reader is None else reader.whole, *self._slots):
            if buf is not None:
                buf.release()
        self._slots = []
        self._kv_buffer = self._kv_scratch = self._reservation = None
        if reader is not None:
            reader.scratch = reader.whole = None
            if reader.prepared is not None:
                reader.prepared.close()
        self.model.close()
        self.pool.close()

    def close(self) -> None:
        """Join the prefetch thread, release every buffer and close the pool (which then holds zero
        bytes) and the files. Closing twice is a no-op."""
        if self._consumed_by is not None:
            return
        self._consumed_by = "closed (ReadyEngine.close was called)"
        self._teardown()

    def __enter__(self) -> ReadyEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
