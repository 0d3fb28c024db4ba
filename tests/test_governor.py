"""The built-in ``adaptive`` governor's rules, on readings made up step by step (no model, no
machine): it shrinks under memory pressure once per level, grows back only after a calm spell and
without going back under the watermark (no flapping), obeys a limit set through the API, and under
heat lowers threads first, then paces, and undoes both in the other order once cool."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgert_core.builtin_governor import AdaptiveGovernor
from edgert_core.governor import Action, GovernorState
from edgert_core.monitors.base import Reading, Value

MIB = 1 << 20
TOTAL = 4096 * MIB  # a 4 GB Pi: the low watermark is 5 % = 204.8 MiB, the high one 409.6 MiB


def readings(**values: Value) -> dict[str, Reading]:
    out = {"memory.total": Reading("memory.total", "total", TOTAL, "B")}
    for key, value in values.items():
        k = key.replace("__", ".")
        out[k] = Reading(k, k, value)
    return out


def state(**changes: object) -> GovernorState:
    base = GovernorState(token_index=0, position=10, budget_bytes=400 * MIB,
                         start_budget_bytes=400 * MIB, minimum_budget_bytes=40 * MIB,
                         limit_bytes=None, pool_held_bytes=380 * MIB, auto_budget=False,
                         threads=4, start_threads=4, pause_s=0.0, now=0.0)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_nothing_changes_on_a_quiet_machine() -> None:
    gov = AdaptiveGovernor()
    for t in range(20):
        assert gov.step(readings(memory__available=3000 * MIB, thermal__max=50.0),
                        state(now=t * 0.5)) is None


def test_low_memavailable_shrinks_once_for_that_level_then_again_if_it_falls() -> None:
    gov = AdaptiveGovernor(settle_s=1.0)
    low = readings(memory__available=100 * MIB)
    action = gov.step(low, state(now=0.0))
    assert action is not None and action.kind == "shrink"
    assert action.budget_bytes is not None
    # gives back what the high watermark (409.6 MiB) asks for: 309.6 MiB of the 400
    assert action.budget_bytes == pytest.approx(400 * MIB - (2 * 0.05 * TOTAL - 100 * MIB), abs=1)
    assert "MemAvailable 100.0 MiB is under the" in action.reason
    shrunk = action.budget_bytes
    # the same reading again (a fake tree does not move): nothing more, however long
    for t in (0.5, 1.5, 5.0, 30.0):
        assert gov.step(low, state(budget_bytes=shrunk, now=t)) is None
    # another process takes more: shrink again, but never below the minimum
    action = gov.step(readings(memory__available=20 * MIB), state(budget_bytes=shrunk, now=31.0))
    assert action is not None and action.kind == "shrink"
    assert action.budget_bytes == 40 * MIB


def test_growing_back_waits_for_calm_and_stops_at_the_high_watermark() -> None:
    gov = AdaptiveGovernor(calm_s=5.0, settle_s=1.0)
    first = gov.step(readings(memory__available=100 * MIB), state(now=0.0))
    assert first is not None and first.budget_bytes is not None
    shrunk = first.budget_bytes
    plenty = readings(memory__available=500 * MIB)  # 90.4 MiB over the high watermark
    assert gov.step(plenty, state(budget_bytes=shrunk, now=2.0)) is None  # calm starts
    assert gov.step(plenty, state(budget_bytes=shrunk, now=6.0)) is None  # 4 s calm < 5
    grow = gov.step(plenty, state(budget_bytes=shrunk, now=7.5))
    assert grow is not None and grow.kind == "grow" and grow.budget_bytes is not None
    assert grow.budget_bytes == pytest.approx(shrunk + 500 * MIB - 2 * 0.05 * TOTAL, abs=1)
    # pressure between calm readings restarts the wait: no flapping
    gov2 = AdaptiveGovernor(calm_s=5.0, settle_s=1.0)
    gov2.step(readings(memory__available=100 * MIB), state(now=0.0))
    gov2.step(plenty, state(budget_bytes=shrunk, now=2.0))
    assert gov2.step(readings(memory__available=150 * MIB), state(budget_bytes=shrunk, now=4.0)) \
        is None  # still low, but this level was given back already
    assert gov2.step(plenty, state(budget_bytes=shrunk, now=5.0)) is None
    assert gov2.step(plenty, state(budget_bytes=shrunk, now=9.0)) is None  # 4 s since calm resumed
    assert gov2.step(plenty, state(budget_bytes=shrunk, now=10.5)) is not None


def test_psi_and_cgroup_events_are_pressure() -> None:
    gov = AdaptiveGovernor()
    action = gov.step(readings(memory__available=3000 * MIB, pressure__memory_some_avg10=25.0),
                      state(now=0.0))
    assert action is not None and "PSI some avg10" in action.reason
    assert action.budget_bytes == 300 * MIB  # a quarter at least
    gov = AdaptiveGovernor()
    assert gov.step(readings(memory__available=3000 * MIB, cgroup__events_high=3), state()) is None
    action = gov.step(readings(memory__available=3000 * MIB, cgroup__events_high=7),
                      state(now=0.5))
    assert action is not None and "memory.high was hit 4 times" in action.reason
    # memory.max hits alone, with plenty free, are the page cache being recycled: not pressure
    gov = AdaptiveGovernor()
    gov.step(readings(memory__available=3000 * MIB, cgroup__events_max=1), state())
    assert gov.step(readings(memory__available=3000 * MIB, cgroup__events_max=50),
                    state(now=0.5)) is None


def test_an_auto_budget_follows_the_room_and_can_go_below_the_minimum() -> None:
    gov = AdaptiveGovernor()
    auto = state(auto_budget=True)
    assert gov.step(readings(memory__available=3000 * MIB, budget__room=395 * MIB), auto) is None
    action = gov.step(readings(memory__available=3000 * MIB, budget__room=250 * MIB),
                      replace(auto, now=0.5))
    assert action is not None and action.budget_bytes == 250 * MIB
    assert "leaves the pool 250.0 MiB" in action.reason
    # a room under the minimum is passed on as it is: the engine stops the run and says so
    gov = AdaptiveGovernor()
    action = gov.step(readings(memory__available=3000 * MIB, budget__room=10 * MIB), auto)
    assert action is not None and action.budget_bytes == 10 * MIB


def test_a_limit_set_through_the_api_is_obeyed_at_once() -> None:
    action = AdaptiveGovernor().step(readings(memory__available=3000 * MIB),
                                     state(limit_bytes=123 * MIB))
    assert action == Action("limit", "the memory limit set through the API is 123.0 MiB",
                            budget_bytes=123 * MIB)


def test_heat_lowers_threads_then_paces_and_cooling_undoes_it_in_reverse() -> None:
    gov = AdaptiveGovernor(heat_step_s=2.0, pace_step_s=0.05)
    hot = readings(memory__available=3000 * MIB, thermal__max=84.0)
    s = state(threads=2, start_threads=2)
    a = gov.step(hot, s)
    assert a is not None and (a.kind, a.threads) == ("threads", 1)
    assert "84.0 °C is over the 80 °C soft limit" in a.reason
    s = replace(s, threads=1, now=1.0)
    assert gov.step(hot, s) is None  # one step every 2 s
    a = gov.step(hot, replace(s, now=2.0))
    assert a is not None and (a.kind, a.pause_s) == ("pace", 0.05)
    s = replace(s, pause_s=0.05, now=4.0)
    a = gov.step(hot, s)
    assert a is not None and a.pause_s == pytest.approx(0.10)
    s = replace(s, pause_s=0.10, now=6.0)
    warm = readings(memory__available=3000 * MIB, thermal__max=77.0)  # under 80, over 75
    assert gov.step(warm, s) is None  # the margin: no restoring yet
    cool = readings(memory__available=3000 * MIB, thermal__max=70.0)
    a = gov.step(cool, replace(s, now=8.0))
    assert a is not None and (a.kind, a.pause_s) == ("pace", 0.0)
    a = gov.step(cool, replace(s, pause_s=0.0, now=10.0))
    assert a is not None and (a.kind, a.threads) == ("threads", 2)
    assert gov.step(cool, replace(s, pause_s=0.0, threads=2, now=12.0)) is None


def test_the_pis_throttled_flags_count_as_heat_and_the_limit_is_settable() -> None:
    gov = AdaptiveGovernor()
    a = gov.step(readings(thermal__max=60.0, throttling__under_voltage=True), state())
    assert a is not None and a.kind == "threads" and "under-voltage" in a.reason
    gov = AdaptiveGovernor(soft_temp_c=60.0)
    a = gov.step(readings(thermal__max=65.0), state())
    assert a is not None and "over the 60 °C soft limit" in a.reason
    # no sensor at all: nothing to react to
    assert AdaptiveGovernor().step(readings(), state()) is None


def test_unknown_rules_are_refused() -> None:
    with pytest.raises(TypeError, match="no rule 'calm'"):
        AdaptiveGovernor(calm=1.0)


def test_a_model_without_a_budget_does_not_grow_to_its_own_peak() -> None:
    """Without a budget the start budget is the plan's peak; the pool holding less than that is no
    reason to re-plan."""
    gov = AdaptiveGovernor(calm_s=0.0, settle_s=0.0)
    quiet = readings(memory__available=3000 * MIB)
    s = state(budget_bytes=None, start_budget_bytes=160 * MIB, pool_held_bytes=120 * MIB)
    for t in range(5):
        assert gov.step(quiet, replace(s, now=float(t))) is None
