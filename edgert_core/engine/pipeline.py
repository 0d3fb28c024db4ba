"""The prefetch pipeline and timing: :class:`StagePipeline` hands out the streamed stages in order,
loading ahead on one background thread with prefetch, and :class:`EngineTimes` says where a run's
time goes (loads, the main thread's waits for them, compute)."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from edgert_core.backends.base import Weight
from edgert_core.engine.stages import LoadedStage, Stage
from edgert_core.errors import EdgeRTError
from edgert_core.memory.pool import PoolBuffer
from edgert_core.models.transformer import LayerWeights


@dataclass
class EngineTimes:
    """Where a run's time goes, in seconds: ``load`` is the wall time of streamed loads (in whichever
    thread ran them), ``wait`` the main thread's time blocked on a load (all of ``load`` without
    prefetch), ``compute`` the main thread's time computing."""

    load: float = 0.0
    wait: float = 0.0
    compute: float = 0.0
    loads: int = 0

    def minus(self, other: EngineTimes) -> EngineTimes:
        return EngineTimes(self.load - other.load, self.wait - other.wait,
                           self.compute - other.compute, self.loads - other.loads)

    def plus(self, other: EngineTimes) -> EngineTimes:
        return EngineTimes(self.load + other.load, self.wait + other.wait,
                           self.compute + other.compute, self.loads + other.loads)

    def hidden_fraction(self) -> float:
        """The part of the load time that ran behind compute (0..1)."""
        if self.load <= 0:
            return 0.0
        return min(1.0, max(0.0, 1.0 - self.wait / self.load))


class StagePipeline:
    """Hands out the streamed stages in order, each in one of the ``slots`` (pool buffers as large as
    the largest stage, held for the whole run). Without prefetch a stage loads when it is taken; with
    prefetch the next ``len(slots) - 1`` stages load in order on one background thread while the
    current one computes, wrapping round from the last stage to the first.

    ``fill(stage_index, slot)`` reads a stage into a slot's memory; ``views(stage_index, slot)``
    returns its weights and block parts over that memory, made once per (stage, slot) and reused,
    since a slot's memory stays where it is for the whole run. ``thread_setup`` runs first on the
    prefetch thread (see :meth:`~edgert_core.engine.tuning.ProcessTuning.prefetch_thread_setup`)."""

    def __init__(
        self,
        stages: Sequence[Stage],
        slots: Sequence[PoolBuffer],
        fill: Callable[[int, int], None],
        views: Callable[[int, int], tuple[dict[str, Weight], list[tuple[LayerWeights, int]]]],
        prefetch: bool,
        times: EngineTimes,
        lock: threading.Lock,
        poison: Callable[[int], None] | None = None,
        thread_setup: Callable[[], None] | None = None,
    ) -> None:
        self.stages = list(stages)
        self._fill = fill
        self._views = views
        self._poison = poison
        self._times = times
        self._lock = lock
        self._free = list(range(len(slots)))
        self._ahead = max(0, len(slots) - 1) if prefetch else 0
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgert-prefetch",
                               initializer=thread_setup)
            if self._ahead > 0 else None
        )
        self._pending: dict[int, tuple[int, Future[None]]] = {}  # stage index -> (slot, load)
        self._cache: dict[tuple[int, int], tuple[dict[str, Weight],
                                                 list[tuple[LayerWeights, int]]]] = {}

    @property
    def prefetch(self) -> bool:
        return self._executor is not None

    def _timed_fill(self, index: int, slot: int) -> None:
        t0 = time.perf_counter()
        self._fill(index, slot)
        with self._lock:
            self._times.load += time.perf_counter() - t0
            self._times.loads += 1

    def _start(self, index: int) -> None:
        slot = self._free.pop()
        assert self._executor is not None
        self._pending[index] = (slot, self._executor.submit(self._timed_fill, index, slot))

    def take(self, index: int) -> LoadedStage:
        """Stage ``index`` loaded (the caller releases it before taking the next); starts loading
        the ones after it."""
        t0 = time.perf_counter()
        if index not in self._pending:
            self.drain()
            if self._executor is None:
                slot = self._free.pop()
                try:
                    self._timed_fill(index, slot)
                except BaseException:
                    self._free.append(slot)
                    raise
            else:
                self._start(index)
        if index in self._pending:
            slot, future = self._pending.pop(index)
            try:
                future.result()  # a load's exception surfaces here
            except BaseException:
                self._free.append(slot)
                raise
        with self._lock:
            self._times.wait += time.perf_counter() - t0
        n = len(self.stages)
        for k in range(1, self._ahead + 1):
            nxt = (index + k) % n
            if nxt == index:
                break
            if nxt not in self._pending and self._free:
                self._start(nxt)
        key = (index, slot)
        views = self._cache.get(key)
        if views is None:
            views = self._cache[key] = self._views(index, slot)
        weights, parts = views
        return LoadedStage(self.stages[index], weights, parts,
                           functools.partial(self._give_back, slot))

    def _give_back(self, slot: int) -> None:
        if self._poison is not None:
            self._poison(slot)
        self._free.append(slot)

    def drain(self) -> None:
        """Give back the stages loaded ahead (waiting for their loads to finish)."""
        pending, self._pending = self._pending, {}
        for slot, future in pending.values():
            # a failed speculative load was for a step that will not run, and holds nothing
            with contextlib.suppress(EdgeRTError):
                future.result()
            self._free.append(slot)

    def close(self) -> None:
        """Drain and join the prefetch thread; drop the cached views."""
        self.drain()
        self._cache = {}
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
