"""The governor contract: the policy that adapts a running generation to the machine.

Between two tokens the engine hands a governor the latest readings of the system monitors (keyed
by :attr:`~edgert_core.monitors.base.Reading.key`: ``memory.available``, ``cgroup.memory_limit``,
``pressure.memory_some_avg10``, ``thermal.max``, ``throttling.throttled`` ... see
``docs/monitors.md``) and the engine's state (:class:`GovernorState`). The governor returns an
:class:`Action`, or ``None`` to change nothing: a new memory budget (the engine re-plans for it
between two tokens, keeping the KV cache and the conversation), a number of kernel threads, a
pause before each token. Every change the engine makes is an :class:`Event`.

Register governors through the ``edgert_register_governors`` hook; ``--governor NAME`` picks one,
``none`` turns adaptation off. This module does no I/O: a governor decides from what it is given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from edgert_core.monitors.base import Reading

#: The governor that runs unless another is chosen.
DEFAULT_GOVERNOR = "adaptive"
#: The name that turns adaptation off.
NO_GOVERNOR = "none"
#: Default soft temperature limit (°C): above it the built-in governor lowers threads, then paces.
DEFAULT_SOFT_TEMP_C = 80.0


@dataclass(frozen=True)
class GovernorState:
    """The engine as a governor sees it before a token.

    ``token_index``: tokens generated so far in this generation; ``position``: tokens in the KV
    cache; ``budget_bytes``: the budget in force (``None``: no budget, every weight resident);
    ``start_budget_bytes``: the budget the model was loaded with (what growing back returns to);
    ``minimum_budget_bytes``: the smallest budget any plan meets for this context (below it the run
    must stop); ``limit_bytes``: an explicit ceiling set through the API (``Model.set_memory_limit``),
    or ``None``; ``pool_held_bytes``: what the engine's pool holds now (part of what the machine
    reports as used); ``auto_budget``: whether the budget is ``auto`` (taken from the machine);
    ``threads``/``start_threads``: the backend's kernel threads now and at the start (``None``: the
    backend has none); ``pause_s``: the pause before each token in force; ``now``: a monotonic clock
    (seconds), for rules about time."""

    token_index: int
    position: int
    budget_bytes: int | None
    start_budget_bytes: int | None
    minimum_budget_bytes: int
    limit_bytes: int | None
    pool_held_bytes: int
    auto_budget: bool
    threads: int | None
    start_threads: int | None
    pause_s: float
    now: float


@dataclass(frozen=True)
class Action:
    """What a governor asks for; ``None`` fields keep what is in force. ``budget_bytes``: re-plan
    for this budget; ``threads``: kernel threads; ``pause_s``: seconds to wait before each token
    (0 ends pacing). ``kind`` names the change for its event (``shrink``, ``grow``, ``threads``,
    ``pace``, ...) and ``reason`` says why, in words a user reads on stderr."""

    kind: str
    reason: str
    budget_bytes: int | None = None
    threads: int | None = None
    pause_s: float | None = None


@dataclass(frozen=True)
class Event:
    """A change the engine made while generating (``run --json`` ``events``): before token
    ``token_index``, of ``kind``, for ``reason``, leaving ``budget_bytes`` and ``threads`` in
    force."""

    token_index: int
    kind: str
    reason: str
    budget_bytes: int | None
    threads: int | None

    def as_dict(self) -> dict[str, object]:
        return {"token_index": self.token_index, "kind": self.kind, "reason": self.reason,
                "budget_bytes": self.budget_bytes, "threads": self.threads}


class Governor(ABC):
    """A policy for adapting a running generation. ``name`` is how ``--governor`` picks it.

    :meth:`step` is called between two tokens (about every token; monitors are read at most every
    :attr:`read_interval_s`, so consecutive calls may see the same readings). It must be cheap and
    must not block: the engine waits for it."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: How often the engine re-reads the monitors for this governor (seconds).
    read_interval_s: ClassVar[float] = 0.1

    def __init__(self, soft_temp_c: float = DEFAULT_SOFT_TEMP_C) -> None:
        self.soft_temp_c = soft_temp_c

    @abstractmethod
    def step(self, readings: Mapping[str, Reading], state: GovernorState) -> Action | None:
        """The change to make before the next token, or ``None``."""


def reading_value(readings: Mapping[str, Reading], key: str) -> float | None:
    """A reading's numeric value (``True``/``False`` as 1/0), or ``None`` when it is absent or not a
    number."""
    r = readings.get(key)
    if r is None or r.value is None or isinstance(r.value, str):
        return None
    return float(r.value)
