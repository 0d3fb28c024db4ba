"""System status: the readings of every registered monitor, for ``edge-rt status`` and for
applications that want to log the machine's state next to a run.

A monitor whose ``read()`` raises is reported as a section with an ``error`` (its name and the
exception) and no readings; the other monitors are still read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edgert_core.budget import format_bytes
from edgert_core.monitors.base import Reading, SystemMonitor
from edgert_core.plugins import PluginRegistry, load_registry


@dataclass(frozen=True)
class MonitorSection:
    """The readings of one monitor, or the error it raised."""

    name: str
    description: str = ""
    readings: list[Reading] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def get(self, key: str) -> Reading | None:
        """The reading with this key, if the monitor gave one."""
        return next((r for r in self.readings if r.key == key), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "error": self.error,
            "readings": [reading_dict(r) for r in self.readings],
        }


@dataclass(frozen=True)
class SystemStatus:
    """Every monitor's section, in the registry's order."""

    sections: list[MonitorSection]

    def section(self, name: str) -> MonitorSection | None:
        return next((s for s in self.sections if s.name == name), None)

    def reading(self, key: str) -> Reading | None:
        """The first reading with this key in any section (``"memory.total"``)."""
        for section in self.sections:
            found = section.get(key)
            if found is not None:
                return found
        return None

    @property
    def errors(self) -> list[MonitorSection]:
        return [s for s in self.sections if not s.ok]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"sections": [{"name", "description", "error", "readings"}]}``."""
        return {"sections": [s.as_dict() for s in self.sections]}


def reading_dict(reading: Reading) -> dict[str, Any]:
    """A reading as a JSON-ready dict; ``value`` is ``null`` for an absent sensor."""
    return {
        "key": reading.key,
        "label": reading.label,
        "value": reading.value,
        "unit": reading.unit,
        "present": reading.present,
        "note": reading.note,
    }


def read_monitor(monitor: SystemMonitor) -> MonitorSection:
    """One monitor's section; an exception from ``read()`` becomes the section's ``error``."""
    name = getattr(monitor, "name", type(monitor).__name__)
    description = getattr(monitor, "description", "")
    try:
        readings = list(monitor.read())
    except Exception as exc:  # a broken monitor must not hide the others
        return MonitorSection(name, description, [], f"{type(exc).__name__}: {exc}")
    return MonitorSection(name, description, readings)


def collect_status(
    registry: PluginRegistry | None = None,
    monitors: Iterable[SystemMonitor] | None = None,
) -> SystemStatus:
    """Read ``monitors``, or every monitor of ``registry`` (by default :func:`load_registry`)."""
    if monitors is not None:
        return SystemStatus([read_monitor(m) for m in monitors])
    reg = registry if registry is not None else load_registry()
    sections = []
    for name in reg.monitor_names():
        try:
            monitor = reg.monitor(name)
        except Exception as exc:  # a monitor that cannot be built (or a name clash) is shown, not fatal
            sections.append(MonitorSection(name, "", [], f"{type(exc).__name__}: {exc}"))
            continue
        sections.append(read_monitor(monitor))
    return SystemStatus(sections)


def format_value(reading: Reading) -> str:
    """A reading's value for people: bytes as ``1.5 GiB``, flags as ``yes``/``no``, ``absent`` for a
    missing sensor; other values with their unit."""
    value = reading.value
    if value is None:
        return "absent"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if reading.unit == "B" and isinstance(value, int):
        return format_bytes(value)
    if isinstance(value, float):
        text = f"{value:.2f}" if not reading.unit else f"{value:.1f}"
    else:
        text = str(value)
    if not reading.unit:
        return text
    return f"{text}{reading.unit}" if reading.unit in ("%", "°C") else f"{text} {reading.unit}"
