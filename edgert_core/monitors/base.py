"""The system-monitor contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

Value = float | int | str | bool | None


@dataclass(frozen=True)
class Reading:
    """One sensor reading. ``value`` is ``None`` when the sensor is absent on this machine; ``note``
    may say why (``"no thermal zones"``)."""

    key: str
    label: str
    value: Value
    unit: str = ""
    note: str = ""

    @property
    def present(self) -> bool:
        return self.value is not None


class SystemMonitor(ABC):
    """A monitor reads a group of sensors. Register the class through ``edgert_register_monitors``.

    ``read`` never raises for a missing or unreadable sensor: it returns the reading with value
    ``None``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def read(self) -> list[Reading]:
        """Current readings, in display order."""
