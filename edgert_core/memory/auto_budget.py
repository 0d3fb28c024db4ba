"""``--memory-budget auto``: a budget taken from the machine the run is on.

The budget is what a run may hold on top of the process's baseline (the RSS before any weight). On
a device it is bounded twice: by the memory limit of the process's cgroup (a container, a systemd
slice; :func:`~edgert_core.memory.cgroup.effective_memory_limit`), which counts the RSS *and* the
page cache, and by the memory the kernel can still give (``MemAvailable`` in ``/proc/meminfo``).
So::

    budget = min(cgroup limit - cgroup held now, MemAvailable) - AUTO_MARGIN_BYTES

where *held* is the cgroup's usage less its clean, unmapped page cache
(:class:`~edgert_core.memory.cgroup.MemoryCharge`): a process that has just imported its libraries
and read a model's header is charged tens of MiB of such cache (measured: 80 of the 125 MiB a fresh
process is charged after importing the CLI and building SmolLM2's tokenizer, cgroup v1), which the
kernel drops before it fails an allocation, so it is room, not use. :data:`AUTO_MARGIN_BYTES` is
left for what no plan counts (the interpreter's temporaries, the page cache of the file reads in
flight, page tables). The same room (:func:`device_room`) tells the engine whether a plan's streamed
weights can stay in the page cache beside what it holds (:mod:`edgert_core.device_cost`). The
budget is resolved once, when the model is loaded; re-reading it as the run goes is the adaptive
runtime's job.

The limit, what the cgroup holds and MemAvailable are read under the environment roots
(``$EDGERT_PROCFS_ROOT``, ``$EDGERT_SYSFS_ROOT``: :mod:`edgert_core.monitors.roots`), so a fake tree
(``tests/fixtures/pi4``) gives the budget the simulated device would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgert_core.budget import format_bytes
from edgert_core.errors import BudgetError
from edgert_core.memory.cgroup import effective_memory_limit, own_memory_charge
from edgert_core.monitors.roots import procfs_root

AUTO = "auto"
#: Bytes ``auto`` leaves unbudgeted below what the machine offers.
AUTO_MARGIN_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class AutoBudget:
    """A resolved ``auto`` budget: the bytes and where they came from (``source``, one line for
    ``run --json``'s ``budget_source`` and ``inspect``)."""

    bytes: int
    source: str
    limit_bytes: int | None  # the cgroup's memory limit, None without one
    available_bytes: int | None  # MemAvailable, None where the OS does not say


def is_auto(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def meminfo_path() -> Path:
    """``<procfs>/meminfo``: ``/proc/meminfo``, or the fake one under ``$EDGERT_PROCFS_ROOT``."""
    return procfs_root() / "meminfo"


def parse_meminfo(meminfo: str) -> dict[str, int]:
    """The fields of a ``/proc/meminfo`` text by name (``MemAvailable``), in bytes for the ``kB``
    ones (the kernel's kB are KiB) and as given for the counts (``HugePages_Total``)."""
    out: dict[str, int] = {}
    for line in meminfo.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            scale = 1024 if len(parts) >= 3 and parts[2] == "kB" else 1
            out[parts[0][:-1]] = int(parts[1]) * scale
    return out


def mem_available(meminfo: str | None = None) -> int | None:
    """``MemAvailable`` of :func:`meminfo_path` (or of the text given) in bytes; ``None`` without
    it. The file is read again at every call."""
    if meminfo is None:
        try:
            meminfo = meminfo_path().read_text()
        except OSError:
            return None
    return parse_meminfo(meminfo).get("MemAvailable")


@dataclass(frozen=True)
class DeviceRoom:
    """What the machine offers a process now: ``bytes`` (the smaller of the cgroup limit less what
    the cgroup holds, and MemAvailable) and why, in one line; ``limit_bytes`` is the cgroup's memory
    limit (``None`` without one)."""

    bytes: int
    why: str
    limit_bytes: int | None
    available_bytes: int | None
    held_bytes: int | None = None  # what the cgroup held (None: not read)

    @property
    def usable_bytes(self) -> int:
        """The room less :data:`AUTO_MARGIN_BYTES`: what a run may plan for."""
        return self.bytes - AUTO_MARGIN_BYTES


def room_under_limit(rss_bytes: int) -> DeviceRoom | None:
    """:func:`device_room` where this process runs under a memory limit (one reading of the
    cgroup: the limit, then what it holds); ``None`` without a limit, where the page cache is the
    kernel's business."""
    limit = effective_memory_limit()
    return None if limit is None else device_room(rss_bytes, limit_bytes=limit)


def device_room(rss_bytes: int, *, limit_bytes: int | None = None, held_bytes: int | None = None,
                available_bytes: int | None = None, read_machine: bool = True) -> DeviceRoom | None:
    """The room of a process whose RSS is ``rss_bytes`` now: ``min(limit - held, MemAvailable)``.
    ``limit_bytes``, the cgroup's ``held_bytes`` (its usage less clean unmapped page cache; the RSS
    where unknown) and ``available_bytes`` default to this machine's (``read_machine``). ``None``
    where the system reports neither a limit nor MemAvailable."""
    if read_machine:
        limit_bytes = effective_memory_limit() if limit_bytes is None else limit_bytes
        if limit_bytes is not None and held_bytes is None:
            charge = own_memory_charge()
            held_bytes = charge.held_bytes if charge is not None else None
        available_bytes = mem_available() if available_bytes is None else available_bytes
    rooms: list[tuple[int, str]] = []
    if limit_bytes is not None:
        used, what = (held_bytes, "cgroup held") if held_bytes is not None else (rss_bytes, "RSS")
        rooms.append((limit_bytes - used,
                      f"cgroup limit {format_bytes(limit_bytes)} - {what} {format_bytes(used)}"))
    if available_bytes is not None:
        rooms.append((available_bytes, f"MemAvailable {format_bytes(available_bytes)}"))
    if not rooms:
        return None
    room, why = min(rooms)
    return DeviceRoom(room, why, limit_bytes, available_bytes, held_bytes)


def resolve(rss_bytes: int, *, limit_bytes: int | None = None, held_bytes: int | None = None,
            available_bytes: int | None = None, read_machine: bool = True) -> AutoBudget:
    """The ``auto`` budget for a process whose RSS is ``rss_bytes`` now: :func:`device_room` less
    :data:`AUTO_MARGIN_BYTES` (same arguments); raises :class:`BudgetError` when the machine leaves
    no room, with the figures."""
    found = device_room(rss_bytes, limit_bytes=limit_bytes, held_bytes=held_bytes,
                        available_bytes=available_bytes, read_machine=read_machine)
    if found is None:
        raise BudgetError(
            "--memory-budget auto: this system reports neither a cgroup memory limit nor "
            "MemAvailable; give a budget such as 256M instead."
        )
    room, why, budget = found.bytes, found.why, found.usable_bytes
    if budget <= 0:
        raise BudgetError(
            f"--memory-budget auto: the machine leaves no room ({why} = {format_bytes(room)}, less "
            f"than the {format_bytes(AUTO_MARGIN_BYTES)} margin); free memory, raise the limit, or "
            "give a budget explicitly."
        )
    source = f"auto: {why} - margin {format_bytes(AUTO_MARGIN_BYTES)} = {format_bytes(budget)}"
    return AutoBudget(budget, source, found.limit_bytes, found.available_bytes)
