"""What runs on a Dask worker: the facts a worker reports before any work (:func:`worker_facts`),
and :class:`StageActor`, the Dask actor that holds one stage of the pipeline: an engine of some
consecutive layers of the model (:meth:`~edgert_core.loaders.base.ValidatedModel.layers`), with
its own budget, plan, pool and KV cache, and a handle on the next stage's actor.

A forward pass goes down the chain: the client calls the first stage with token ids; each stage
runs its layers and calls the next one with its float32 ``[T, hidden]`` output (worker to worker,
not through the client); the last stage runs the head and its logits come back up the chain. KV
caches never leave their workers.

This module imports Dask only where it runs on a worker (to find that worker); the next stage's
handle is Dask's, passed in by the client (:mod:`edgert_core.cluster.pipeline`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edgert_core.errors import ClusterError, EdgeRTError
from edgert_core.memory.io_stats import read_bytes

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class Settings:
    """A cluster run's settings: ``model`` (a path or a pulled name, which every worker opens from
    its own disk), ``backend`` (``None``: each worker's best), the strategy each worker plans with,
    the context settings, and ``worker_budget`` (``--worker-budget``; ``None``: from each worker's
    memory limit)."""

    model: str
    backend: str | None = None
    strategy: str = "auto"
    max_context: int = 512
    prefill_chunk: int = 64
    kv_cache: str = "f32"
    activations: str | None = None
    threads: int | None = None
    worker_budget: int | None = None


@dataclass(frozen=True)
class StageSpec:
    """What a worker runs: layers ``first..stop-1`` of the run's model under a budget of
    ``budget_bytes`` (``None``: every weight resident)."""

    settings: Settings
    first: int
    stop: int
    budget_bytes: int | None


class NextStage(Protocol):
    """The next stage as a stage sees it: a Dask actor handle, whose method calls return a future."""

    def forward(self, ids: list[int], hidden: F32, start: int, all_logits: bool) -> Any: ...


SPEED_MATRIX = (4096, 4096)  # float32 rows x columns: 64 MiB, larger than a last-level cache
SPEED_SECONDS = 0.05
SPEED_TRIES = 3


def measure_speed() -> float:
    """How fast this worker goes through weights, in bytes per second: the best of
    :data:`SPEED_TRIES` runs of float32 matrix-vector products over a 64 MiB matrix for
    :data:`SPEED_SECONDS` each (decode is such products over the weights, bound by memory
    bandwidth). A rough figure for comparing workers, not a benchmark."""
    rows, cols = SPEED_MATRIX
    w = np.ones((rows, cols), dtype=np.float32)
    x = np.ones(cols, dtype=np.float32)
    best = 0.0
    for _ in range(SPEED_TRIES):
        n = 0
        t0 = time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < SPEED_SECONDS or n == 0:
            w @ x
            n += 1
        best = max(best, n * w.nbytes / elapsed)
    return best


def worker_facts(model: str, configure: bool = True, dask_worker: Any = None) -> dict[str, Any]:
    """A worker's answer before any work (a task pinned to each worker): its memory
    limit, its RSS now (what Dask and edge-rt take before any weight), and whether it can open
    ``model`` (its size, or the error). With ``configure``, also turns off Dask's own memory
    actions that would act on an edge-rt stage within its budget (see :mod:`edgert_core.cluster`)."""
    from edgert_core.api import open_source
    from edgert_core.memory.rss import current_rss_bytes

    if dask_worker is None:  # run as a task: the worker it runs in
        from distributed import get_worker

        dask_worker = get_worker()
    facts: dict[str, Any] = {"pid": os.getpid(), "rss_bytes": current_rss_bytes(),
                             "memory_limit": None, "model_bytes": None, "error": None}
    if dask_worker is not None:
        facts["memory_limit"] = dask_worker.memory_manager.memory_limit
    if dask_worker is not None and configure:
        manager = dask_worker.memory_manager
        # a stage's data is its engine's pool, not Dask data: spilling has nothing to move and a
        # pause would stop the pipeline; the nanny's terminate threshold stays (it guards the
        # device), and the budget is set below it
        manager.memory_target_fraction = False
        manager.memory_spill_fraction = False
        manager.memory_pause_fraction = False
    try:
        source = open_source(model)
        try:
            facts["model_bytes"] = sum(source.file_sizes().values())
        finally:
            source.close()
    except EdgeRTError as exc:
        facts["error"] = str(exc)
    return facts


class StageActor:
    """One stage of the pipeline, living on one worker (made with ``Client.submit(StageActor,
    spec, actor=True, workers=[address])``). The engine is prepared in the constructor (the
    worker's peak RSS is reset just before, so :meth:`stats` reports this stage's peak)."""

    def __init__(self, spec: StageSpec) -> None:
        from distributed import get_worker

        from edgert_core.api import choose_activations, choose_backend, open_source
        from edgert_core.engine import Engine
        from edgert_core.memory.malloc import give_back_freed_memory
        from edgert_core.memory.rss import reset_peak_rss
        from edgert_core.plan import PlanningContext
        from edgert_core.plugins import load_registry

        self.spec = spec
        self.address: str = get_worker().address
        self.next: NextStage | None = None
        self.next_seconds = 0.0  # calls to the next stage, beyond its own work
        self.next_calls = 0
        s = spec.settings
        try:
            registry = load_registry()
            part = open_source(s.model).validate().layers(spec.first, spec.stop)
            backend = choose_backend(registry, part.dtypes, s.backend)
            if s.threads is not None and backend.threads is not None:
                backend.threads = s.threads
            backend.activations = choose_activations(backend, s.activations)
            ctx = PlanningContext(budget_bytes=spec.budget_bytes, max_context=s.max_context,
                                  prefill_chunk=s.prefill_chunk, kv_cache=s.kv_cache)
            planned = Engine(part, backend).plan(ctx, s.strategy, registry)
            give_back_freed_memory()
            reset_peak_rss()
            # no prepared-weights cache for a part (see PartSource.file_identity)
            self.engine = planned.prepare(weight_cache=False, notify=None)
            self.read_bytes_at_start = read_bytes()
        except EdgeRTError as exc:  # a plain error pickles back to the client with its message
            raise ClusterError(f"Worker {self.address} cannot run layers {spec.first}-"
                               f"{spec.stop - 1}: {exc}") from None
        self.backend = backend.name

    def link(self, nxt: NextStage | None) -> None:
        """The stage after this one (``None``: this stage runs the head)."""
        self.next = nxt

    async def forward(self, ids: list[int], hidden: F32 | None, start: int,
                      all_logits: bool) -> tuple[F32, float]:
        """Run this stage and, through the next stages, the rest of the model: the logits, and
        the seconds this call took here (for the caller's hop time).

        A coroutine, so Dask runs it on the worker's event loop rather than handing it to its
        actor thread and back: the stage's compute holds the loop for the few milliseconds it
        takes, and the call to the next stage is awaited."""
        t0 = time.perf_counter()
        out = self.engine.run_part(ids, hidden, start, all_logits=all_logits)
        if self.next is None:
            return out, time.perf_counter() - t0
        c0 = time.perf_counter()
        logits, inner = await self.next.forward(ids, out, start, all_logits)
        self.next_seconds += time.perf_counter() - c0 - inner
        self.next_calls += 1
        return logits, time.perf_counter() - t0

    def stats(self) -> dict[str, Any]:
        """This stage's figures: layers, budget, the worker's OS peak RSS since the engine was
        prepared and its RSS just before (the baseline), the mean hop to the next stage."""
        from edgert_core.memory.rss import peak_rss_bytes

        now = read_bytes()
        plan = self.engine.plan
        return {
            "address": self.address,
            "pid": os.getpid(),
            "layers": [self.spec.first, self.spec.stop - 1],
            "budget_bytes": self.spec.budget_bytes,
            "backend": self.backend,
            "strategy": plan.strategy,
            "groups": [[g.layers[0] + self.spec.first, g.layers[-1] + self.spec.first]
                       for g in plan.groups],
            "resident_groups": [g.resident for g in plan.groups],
            "head_resident": plan.head_resident if self.engine.part is None
            or self.engine.part.has_head else None,
            "predicted_peak_bytes": plan.predicted_peak_bytes,
            "pool_peak_bytes": self.engine.pool_peak_bytes,
            "peak_rss_bytes": peak_rss_bytes(),
            "baseline_rss_bytes": self.engine.baseline_rss_bytes,
            "next_hop_ms": (1000 * self.next_seconds / self.next_calls
                            if self.next_calls else None),
            "cached_tokens": len(self.engine.cached_ids),
            # bytes this worker read from disk since its stage was ready (streamed weights that
            # were not in the page cache; None where the OS does not say)
            "read_bytes": (None if now is None or self.read_bytes_at_start is None
                           else now - self.read_bytes_at_start),
        }

    def close(self) -> None:
        """Give the engine's memory back (the actor itself goes when the client drops it)."""
        self.next = None
        self.engine.close()


def layer_ranges(cuts: Sequence[tuple[int, int]]) -> str:
    """``0-9, 10-19, 20-29``: stages' layers for messages."""
    return ", ".join(f"{a}-{b - 1}" for a, b in cuts)
