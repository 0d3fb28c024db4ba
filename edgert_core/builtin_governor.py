"""The built-in governor, ``adaptive``: the budget follows the machine's free memory, and heat lowers
the kernel threads, then paces tokens. Registered through ``edgert_register_governors`` like any
plugin's governor. Pure policy: it decides from the readings and the state it is given (no I/O).

Memory (checked first; ``free`` is ``memory.available``, MemAvailable):

- **Pressure** is any of: ``free`` under the low watermark (``max(64 MiB, 5 %`` of
  ``memory.total``)); PSI ``pressure.memory_some_avg10`` at or over 10 %; the cgroup's
  ``memory.high`` hit since the last look (``cgroup.events_high`` rising); ``memory.max`` hit
  (``cgroup.events_max`` rising) while ``free`` is under the high watermark; for an ``auto``
  budget, a machine that leaves the pool less room than the budget by more than
  ``room_tolerance_bytes`` (``budget.room``, which the engine adds: the cgroup limit less what the
  cgroup holds, and MemAvailable, each plus the pool's own bytes, less the auto margin).
- Under pressure the budget **shrinks** to give back what the high watermark (twice the low one)
  asks for, at least a quarter of it, never below the minimum for the context nor above
  ``budget.room``. After a shrink it waits ``settle_s`` for the machine's figures to show what was
  given back, and shrinks again only if ``free`` fell further (another process kept taking) or the
  room is still short; so a reading that does not move (a fake tree) shrinks once, not to the floor.
- When no signal has been seen for ``calm_s`` and ``free`` is over the high watermark, the budget
  **grows** back toward the start budget by what is free beyond the high watermark, so growing
  never takes the machine back under a watermark (no flapping).
- A limit set through the API (``Model.set_memory_limit``) is obeyed at once (``limit``).

Heat: over the soft limit (``thermal.max`` >= ``soft_temp_c``, 80 °C by default) or while the Pi's
firmware reports throttling, a capped frequency, the soft temperature limit or under-voltage now
(``throttling.*``), one step every ``heat_step_s``: a kernel thread less down to one, then a pause
before each token growing by ``pace_step_s`` up to ``pace_max_s``. Below the limit less
``heat_margin_c`` with no such flag, the same steps undo it: pacing first, then the threads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from edgert_core.budget import format_bytes
from edgert_core.governor import (
    DEFAULT_GOVERNOR,
    DEFAULT_SOFT_TEMP_C,
    Action,
    Governor,
    GovernorState,
    reading_value,
)
from edgert_core.hookspecs import hookimpl
from edgert_core.monitors.base import Reading

MIB = 1 << 20
#: The flags of the Pi's throttled word that mean "hot or starved now".
HEAT_FLAGS = (("throttling.throttled", "throttled"), ("throttling.freq_capped", "frequency capped"),
              ("throttling.soft_temp_limit", "at the soft temperature limit"),
              ("throttling.under_voltage", "under-voltage"))


class AdaptiveGovernor(Governor):
    """The default governor (see the module's docstring for its rules)."""

    name: ClassVar[str] = DEFAULT_GOVERNOR
    description: ClassVar[str] = ("budget follows free memory and memory pressure; heat lowers "
                                  "threads, then paces tokens")

    low_min_bytes: int = 64 * MIB
    room_tolerance_bytes: int = 8 * MIB
    low_fraction: float = 0.05
    psi_some_percent: float = 10.0
    calm_s: float = 5.0
    settle_s: float = 1.0
    heat_margin_c: float = 5.0
    heat_step_s: float = 2.0
    pace_step_s: float = 0.05
    pace_max_s: float = 1.0

    def __init__(self, soft_temp_c: float | None = None, **rules: float) -> None:
        """``rules`` override the class's thresholds by name (``calm_s=0.5``, ...): tests and
        presets."""
        super().__init__(DEFAULT_SOFT_TEMP_C if soft_temp_c is None else soft_temp_c)
        for key, value in rules.items():
            if not hasattr(type(self), key) or key.startswith("_"):
                raise TypeError(f"AdaptiveGovernor has no rule {key!r}")
            setattr(self, key, value)
        self._counts: dict[str, float | None] = {}
        self._last_memory_change = float("-inf")
        self._shrunk_at_free: float | None = None
        self._calm_since: float | None = None
        self._last_heat_change = float("-inf")

    def step(self, readings: Mapping[str, Reading], state: GovernorState) -> Action | None:
        return self._memory(readings, state) or self._heat(readings, state)

    # -- memory ------------------------------------------------------------------------------------
    def _rising(self, readings: Mapping[str, Reading], key: str) -> float:
        """How much a counter rose since the last call (0 on the first look or without it)."""
        now, before = reading_value(readings, key), self._counts.get(key)
        self._counts[key] = now
        return 0.0 if now is None or before is None else max(0.0, now - before)

    def _memory(self, readings: Mapping[str, Reading], state: GovernorState) -> Action | None:
        current = state.budget_bytes
        if current is None:  # no budget: the plan keeps everything, which is its start budget
            current = state.start_budget_bytes if state.start_budget_bytes is not None \
                else state.pool_held_bytes
        if state.limit_bytes is not None and state.limit_bytes < current:
            self._last_memory_change = state.now
            return Action("limit", f"the memory limit set through the API is "
                          f"{format_bytes(state.limit_bytes)}", budget_bytes=state.limit_bytes)
        total = reading_value(readings, "memory.total")
        free = reading_value(readings, "memory.available")
        room = reading_value(readings, "budget.room") if state.auto_budget else None
        low = max(float(self.low_min_bytes), self.low_fraction * total if total else 0.0)
        high = 2 * low
        signals: list[str] = []
        if free is not None and free < low:
            signals.append(f"MemAvailable {format_bytes(int(free))} is under the "
                           f"{format_bytes(int(low))} watermark")
        psi = reading_value(readings, "pressure.memory_some_avg10")
        if psi is not None and psi >= self.psi_some_percent:
            signals.append(f"memory pressure (PSI some avg10) is {psi:.1f}%")
        hits = self._rising(readings, "cgroup.events_high")
        if hits:
            signals.append(f"the cgroup's memory.high was hit {int(hits)} times")
        hits = self._rising(readings, "cgroup.events_max")
        if hits and free is not None and free < high:
            signals.append(f"the cgroup's memory.max was hit {int(hits)} times")
        short = room is not None and room < current - self.room_tolerance_bytes
        if short:
            assert room is not None
            signals.append(f"the machine leaves the pool {format_bytes(int(room))}")
        if signals:
            return self._shrink(signals, state, current, free, high, room, short)
        return self._grow(state, current, free, high, room)

    def _shrink(self, signals: list[str], state: GovernorState, current: int, free: float | None,
                high: float, room: float | None, short: bool) -> Action | None:
        self._calm_since = None
        if state.now - self._last_memory_change < self.settle_s:
            return None
        fell_further = (free is not None and self._shrunk_at_free is not None
                        and free < self._shrunk_at_free - self.low_min_bytes / 2)
        if self._shrunk_at_free is not None and not fell_further and not short:
            return None  # already given back for this level of free memory
        give = max(high - free if free is not None else 0.0, current / 4)
        target = int(current - give)
        if room is not None:
            target = min(target, int(room))
        if room is None or room >= state.minimum_budget_bytes:
            target = max(target, state.minimum_budget_bytes)
        if target >= current:
            return None  # at the minimum already: nothing left to give back
        self._last_memory_change = state.now
        self._shrunk_at_free = free if free is not None else 0.0
        return Action("shrink", "; ".join(signals), budget_bytes=target)

    def _grow(self, state: GovernorState, current: int, free: float | None, high: float,
              room: float | None) -> Action | None:
        start = state.start_budget_bytes
        if start is None or current >= start:
            self._shrunk_at_free = None
            return None
        if self._calm_since is None:
            self._calm_since = state.now
            return None
        if state.now - self._calm_since < self.calm_s or free is None or free <= high:
            return None
        if state.now - self._last_memory_change < self.settle_s:
            return None
        target = min(start, int(current + free - high))
        if room is not None:
            target = min(target, int(room))
        if state.limit_bytes is not None:
            target = min(target, state.limit_bytes)
        if target <= current:
            return None
        self._last_memory_change = state.now
        if target >= start:
            self._shrunk_at_free = None
        return Action("grow", f"no memory pressure for {self.calm_s:g} s and "
                      f"{format_bytes(int(free))} available", budget_bytes=target)

    # -- heat --------------------------------------------------------------------------------------
    def _heat(self, readings: Mapping[str, Reading], state: GovernorState) -> Action | None:
        temp = reading_value(readings, "thermal.max")
        flags = [label for key, label in HEAT_FLAGS if reading_value(readings, key)]
        hot = (temp is not None and temp >= self.soft_temp_c) or bool(flags)
        cool = (temp is None or temp < self.soft_temp_c - self.heat_margin_c) and not flags
        if not (hot or cool) or state.now - self._last_heat_change < self.heat_step_s:
            return None
        action = self._hotter(state, temp, flags) if hot else self._cooler(state, temp)
        if action is not None:
            self._last_heat_change = state.now
        return action

    def _hotter(self, state: GovernorState, temp: float | None, flags: list[str]) -> Action | None:
        why = ([f"{temp:.1f} °C is over the {self.soft_temp_c:g} °C soft limit"]
               if temp is not None and temp >= self.soft_temp_c else []) + flags
        reason = "; ".join(why)
        if state.threads is not None and state.threads > 1:
            return Action("threads", reason, threads=state.threads - 1)
        pause = min(self.pace_max_s, state.pause_s + self.pace_step_s)
        if pause > state.pause_s:
            return Action("pace", reason, pause_s=pause)
        return None

    def _cooler(self, state: GovernorState, temp: float | None) -> Action | None:
        where = "no temperature sensor" if temp is None else f"{temp:.1f} °C"
        reason = (f"{where}, under the {self.soft_temp_c - self.heat_margin_c:g} °C restore "
                  "point, and no throttling")
        if state.pause_s > 0:
            return Action("pace", reason, pause_s=0.0)
        if (state.threads is not None and state.start_threads is not None
                and state.threads < state.start_threads):
            return Action("threads", reason, threads=state.threads + 1)
        return None


@hookimpl
def edgert_register_governors(register: Callable[[type[Governor]], None]) -> None:
    register(AdaptiveGovernor)
