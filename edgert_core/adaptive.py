"""A generation that adapts to the machine while it runs: :class:`AdaptiveRun` stands between
:func:`~edgert_core.generate.generate_ids` and the model's engine. Before every forward pass it
reads the monitors (at most every ``governor.read_interval_s``: :class:`ReadingSampler`), asks the
governor for an action and applies it:

- a new budget: the model re-plans for it between two tokens with the same strategy, keeping the KV
  cache and the conversation (:meth:`Model.replan <edgert_core.api.Model.replan>`), so greedy tokens
  are those of an undisturbed run; below the minimum for the context the generation stops with the
  tokens so far and a :class:`MemoryPressureError` that says so;
- kernel threads: the backend's ``threads``;
- a pause before each token (pacing, for heat).

Every change is an :class:`~edgert_core.governor.Event` (``events``), and one line on stderr.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from edgert_core.budget import format_bytes
from edgert_core.engine.pipeline import EngineTimes
from edgert_core.errors import RunStoppedError
from edgert_core.governor import Action, Event, Governor, GovernorState
from edgert_core.memory import auto_budget
from edgert_core.memory.rss import current_rss_bytes
from edgert_core.monitors.base import Reading

if TYPE_CHECKING:
    from edgert_core.api import Model
    from edgert_core.generate import GenerationStats
    from edgert_core.monitors.sampler import ReadingSampler


def hottest_zone_c() -> float | None:
    """The hottest thermal zone now (°C, the thermal monitor's ``thermal.max``), ``None`` where the
    machine (or the fake tree) has no sensor: what a run's report and a benchmark row record at the
    start and the end."""
    from edgert_core.monitors.builtin import ThermalMonitor

    for reading in ThermalMonitor().read():
        if reading.key == "thermal.max" and isinstance(reading.value, (int, float)):
            return float(reading.value)
    return None


class MemoryPressureError(RunStoppedError):
    """The machine left less memory than the smallest plan for the context needs: the generation
    stopped with the tokens so far."""

    stop_reason = "memory_pressure"


class AdaptiveRun:
    """The engine a governed generation drives (it has what
    :class:`~edgert_core.generate.StepEngine` asks for): the model's current engine, which a new
    budget replaces between two tokens."""

    def __init__(self, model: Model, governor: Governor, sampler: ReadingSampler,
                 stats: GenerationStats, notify: Callable[[str], None] | None = None) -> None:
        self.model = model
        self.governor = governor
        self.sampler = sampler
        self.stats = stats
        self.notify = notify
        self.events: list[Event] = []
        self.pause_s = 0.0
        self.govern_seconds = 0.0  # time spent reading monitors and deciding
        self.governs = 0
        engine = model.engine
        self._times_before = EngineTimes()  # the times of the engines this run closed
        self._peak = engine.pool_peak_bytes
        self._room: Reading | None = None
        self._room_at = float("-inf")
        self.start_threads = self._threads()

    # -- what generation reads ------------------------------------------------------------------
    @property
    def vocab(self) -> int:
        return self.model.engine.vocab

    @property
    def max_context(self) -> int:
        return self.model.engine.max_context

    @property
    def cached_ids(self) -> list[int]:
        return self.model.engine.cached_ids

    @property
    def times(self) -> EngineTimes:
        return self._times_before.plus(self.model.engine.times)

    @property
    def baseline_rss_bytes(self) -> int:
        return self.model.engine.baseline_rss_bytes

    @property
    def prefetch(self) -> bool:
        return self.model.engine.prefetch

    @property
    def pool_peak_bytes(self) -> int:
        return max(self._peak, self.model.engine.pool_peak_bytes)

    def forward(self, ids: Sequence[int], start: int, *,
                all_logits: bool = False) -> NDArray[np.float32]:
        self.govern(start)
        if self.pause_s > 0 and len(ids) == 1:
            time.sleep(self.pause_s)
        return self.model.engine.forward(ids, start, all_logits=all_logits)

    def end_of_step(self) -> None:
        self.model.engine.end_of_step()

    # -- governing --------------------------------------------------------------------------------
    def _threads(self) -> int | None:
        threads = getattr(self.model.backend, "threads", None)
        return threads if isinstance(threads, int) else None

    def _budget_room(self, now: float) -> Reading | None:
        """For an ``auto`` budget, the room the machine leaves the pool now (``budget.room``): the
        smaller of the cgroup limit less what it holds and MemAvailable, plus what the pool holds
        (counted in those figures as used), less the auto margin. Read with the monitors."""
        if not self.model.auto_budget:
            return None
        if now - self._room_at >= self.governor.read_interval_s:
            self._room_at = now
            found = auto_budget.device_room(current_rss_bytes())
            if found is None:
                self._room = None
            else:
                held = self.model.engine.pool.held_bytes
                self._room = Reading("budget.room", "room for the pool", found.usable_bytes + held,
                                     "B", f"{found.why} + pool {format_bytes(held)} - margin")
        return self._room

    def state(self, position: int, now: float) -> GovernorState:
        model = self.model
        engine = model.engine
        return GovernorState(
            token_index=self.stats.generated_tokens,
            position=position,
            budget_bytes=model.context.budget_bytes,
            start_budget_bytes=model.start_budget_bytes,
            minimum_budget_bytes=model.minimum_budget_bytes,
            limit_bytes=model.memory_limit_bytes,
            pool_held_bytes=engine.pool.held_bytes,
            auto_budget=model.auto_budget,
            threads=self._threads(),
            start_threads=self.start_threads,
            pause_s=self.pause_s,
            now=now,
        )

    def govern(self, position: int) -> None:
        """Read, ask the governor, apply its action (before the pass at ``position``)."""
        t0 = time.perf_counter()
        readings = self.sampler.readings(t0)
        room = self._budget_room(t0)
        if room is not None:
            readings = {**readings, room.key: room}
        action = self.governor.step(readings, self.state(position, t0))
        self.governs += 1
        self.govern_seconds += time.perf_counter() - t0
        if action is not None:
            self.apply(action)

    def apply(self, action: Action) -> None:
        """Make the change and record it as an event."""
        if action.budget_bytes is not None:
            self._replan(action)
        if action.threads is not None and self._threads() is not None:
            setattr(self.model.backend, "threads", max(1, action.threads))  # noqa: B010
        if action.pause_s is not None:
            self.pause_s = max(0.0, action.pause_s)
        event = Event(self.stats.generated_tokens, action.kind, action.reason,
                      self.model.context.budget_bytes, self._threads())
        self.events.append(event)
        if self.notify is not None:
            budget = "none" if event.budget_bytes is None else format_bytes(event.budget_bytes)
            pace = f", {self.pause_s * 1000:.0f} ms between tokens" if self.pause_s else ""
            self.notify(f"edge-rt: {event.kind} before token {event.token_index + 1}: "
                        f"{event.reason} -> budget {budget}, threads {event.threads}{pace}")

    def _replan(self, action: Action) -> None:
        assert action.budget_bytes is not None
        model = self.model
        minimum = model.minimum_budget_bytes
        if action.budget_bytes < minimum:
            raise MemoryPressureError(
                f"Stopped after {self.stats.generated_tokens} tokens: {action.reason}, which leaves "
                f"{format_bytes(action.budget_bytes)} for the model, below the "
                f"{format_bytes(minimum)} the smallest plan needs for a context of "
                f"{model.context.max_context} tokens. Free memory, or lower --max-context.")
        old = model.engine
        times, peak = old.times, old.pool_peak_bytes
        model.replan(action.budget_bytes)
        self._times_before = self._times_before.plus(times)
        self._peak = max(self._peak, peak)
