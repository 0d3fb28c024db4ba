"""Readings for a governor: every machine monitor's readings in one dict, re-read at most every
``min_interval_s``.

A governor looks before every token, which on a fast model is hundreds of times a second; the
machine's figures (MemAvailable, PSI's 10 s average, a thermal zone) do not move that fast, and each
read costs some 30 small pseudo-file reads (under a millisecond; ``docs/monitors.md`` has the
measured figure). So :class:`ReadingSampler` re-reads only when ``min_interval_s`` has passed and
hands back the last readings in between. The monitors it is given should not block:
:func:`machine_monitors` builds the built-in ones so.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from edgert_core.monitors.base import Reading, SystemMonitor
from edgert_core.monitors.builtin import (
    CgroupMonitor,
    CpuMonitor,
    MemoryMonitor,
    PressureMonitor,
    ThermalMonitor,
    ThrottlingMonitor,
)

#: Seconds between two reads of the monitors, by default.
DEFAULT_MIN_INTERVAL_S = 0.25


class ReadingSampler:
    """The readings of ``monitors`` keyed by :attr:`Reading.key`, re-read when at least
    ``min_interval_s`` seconds have passed since the last read (else the last readings again).

    ``now`` (:meth:`readings`) is a time in seconds on one clock for all calls: by default
    :func:`time.perf_counter`; a caller that passes its own must always pass it. A monitor that
    raises is skipped, its error kept in :attr:`errors` (name -> ``"Type: message"``, for the latest
    read), and the others are still read. :attr:`reads` counts the reads and :attr:`read_seconds`
    adds up the wall time they took, so a caller can report what watching the machine cost.
    """

    def __init__(self, monitors: Iterable[SystemMonitor],
                 min_interval_s: float = DEFAULT_MIN_INTERVAL_S) -> None:
        if not min_interval_s >= 0:  # also refuses NaN
            raise ValueError(f"min_interval_s must be 0 or more seconds, got {min_interval_s}")
        self.monitors = list(monitors)
        self.min_interval_s = float(min_interval_s)
        self.reads = 0
        self.read_seconds = 0.0
        self.errors: dict[str, str] = {}
        self._last: dict[str, Reading] = {}
        self._last_at: float | None = None

    def readings(self, now: float | None = None) -> dict[str, Reading]:
        """Every monitor's readings by key (a key given by two monitors: the later one's). A new
        dict each call; the readings are the last read's until ``min_interval_s`` has passed since
        it (or the clock went back)."""
        now = time.perf_counter() if now is None else now
        last = self._last_at
        if last is None or not 0 <= now - last < self.min_interval_s:
            self._read()
            self._last_at = now
        return dict(self._last)

    def _read(self) -> None:
        start = time.perf_counter()
        out: dict[str, Reading] = {}
        errors: dict[str, str] = {}
        for monitor in self.monitors:
            try:
                readings = monitor.read()
            except Exception as exc:  # a broken monitor must not hide the others
                name = getattr(monitor, "name", type(monitor).__name__)
                errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            for reading in readings:
                out[reading.key] = reading
        self._last, self.errors = out, errors
        self.reads += 1
        self.read_seconds += time.perf_counter() - start


def machine_monitors() -> list[SystemMonitor]:
    """Fresh instances of the built-in monitors that describe the machine and cannot block: memory,
    cgroup, pressure, thermal, throttling (never running ``vcgencmd``) and CPU (busy percentage since
    the previous read, ``interval=0``). Not the process monitor (a governor knows its own pool) nor
    the device monitor (the model does not change). They read under the environment roots."""
    return [MemoryMonitor(), CgroupMonitor(), PressureMonitor(), ThermalMonitor(),
            ThrottlingMonitor(allow_commands=False), CpuMonitor(interval=0)]
