"""Memory budgets: parse human sizes such as ``256M``, ``1G``, ``512MiB``, ``1.5GB`` or plain bytes.

Units follow what people type for memory limits (as ``docker --memory`` and ``ulimit`` do): ``K``, ``M``,
``G`` and ``KiB``, ``MiB``, ``GiB`` are powers of 1024; ``KB``, ``MB``, ``GB`` are powers of 1000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgert_core.errors import BudgetError

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True, order=True)
class MemoryBudget:
    """A positive number of bytes that a run may hold on top of the process's baseline."""

    bytes: int

    def __post_init__(self) -> None:
        if self.bytes <= 0:
            raise BudgetError(f"A memory budget must be positive, got {self.bytes} bytes.")

    @classmethod
    def parse(cls, text: str | int) -> MemoryBudget:
        """Parse ``"256M"``, ``"1.5GB"``, ``"512MiB"``, ``"1048576"`` or an int of bytes."""
        if isinstance(text, int):
            return cls(text)
        match = _PATTERN.match(text)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise BudgetError(
                f"Cannot read memory budget {text!r}: write a number of bytes or a size such as "
                "256M, 1G, 512MiB or 1.5GB."
            )
        value = float(match.group(1)) * _UNITS[unit]
        return cls(int(value))

    def __str__(self) -> str:
        return format_bytes(self.bytes)


def format_bytes(n: int) -> str:
    """Render a byte count for people: ``64.0 MiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
