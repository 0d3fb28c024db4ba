"""What a plan costs on a device whose memory limit counts the page cache (a Pi's RAM, a container's
cgroup): where its streamed weights come from, and the speed the disk allows.

A streamed weight is read from the model file once per token. Whether that read reaches the disk
depends on the page cache, which a memory limit charges beside what the process holds:

* If the plan's pool (``predicted_peak_bytes``) **and** its streamed weights fit the room the device
  offers (:func:`edgert_core.memory.auto_budget.device_room`, less the margin), the streamed pages
  stay cached after the first token: no disk read per token (read mode ``cached``).
* Otherwise keeping them cached only evicts the pages the next read needs (the reads go round the
  file in the same order every token, the worst case for an LRU cache): every streamed byte comes
  from disk, and it is read past the page cache so it pushes out nothing else (read mode ``drop``:
  each read's pages dropped after it; the engine reads ``direct``, with ``O_DIRECT``, instead where
  the bandwidth measurement found that faster on the model's disk).

Since ``peak + streamed = fixed + resident + slots * stage + streamed >= fixed + every weight``, a
streamed plan stays cached only where the whole model would have fitted resident; where it does not,
the plan with the fewest bytes from disk is the one that keeps the most weights resident. At a
measured read bandwidth ``B`` (:mod:`edgert_core.memory.bandwidth`) no run can beat
``B / disk bytes per token`` tokens per second: the disk bound the benchmark compares against, and
the floor of the time estimate ``auto`` ranks plans by (:func:`seconds_per_token`).

This module does arithmetic only; the room and the bandwidth are measured elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgert_core.budget import format_bytes
from edgert_core.layout import ModelLayout
from edgert_core.plan import NOMINAL_LOAD_BYTES_PER_S, ExecutionPlan, estimated_seconds_per_token

CACHED = "cached"
DROP = "drop"


@dataclass(frozen=True)
class DeviceCost:
    """How a plan reads its streamed weights on a device: ``read_mode`` (``cached`` or ``drop``),
    the bytes it reads from disk per token, and why, in one line."""

    read_mode: str
    disk_bytes_per_token: int
    reason: str


def device_cost(plan: ExecutionPlan, layout: ModelLayout, room_bytes: int | None) -> DeviceCost:
    """The cost of ``plan`` where the device leaves ``room_bytes`` for the run (pool and page cache
    together, margin already taken off; ``None``: no memory limit, the page cache is the kernel's
    business)."""
    streamed = plan.streamed_bytes_per_token(layout)
    if streamed == 0:
        return DeviceCost(CACHED, 0, "nothing is streamed")
    if room_bytes is None:
        return DeviceCost(CACHED, 0, "no memory limit")
    both = (f"the plan's peak {format_bytes(plan.predicted_peak_bytes)} and its "
            f"{format_bytes(streamed)} streamed a token")
    if plan.predicted_peak_bytes + streamed <= room_bytes:
        return DeviceCost(CACHED, 0, f"{both} fit the {format_bytes(room_bytes)} room: they stay in "
                                     "the page cache")
    return DeviceCost(DROP, streamed, f"{both} exceed the {format_bytes(room_bytes)} room: every "
                                      "streamed byte comes from disk, so it is read past the page cache")


def disk_bound_tokens_per_s(disk_bytes_per_token: float | None,
                            read_bytes_per_s: float | None) -> float | None:
    """The tokens per second a disk reading ``read_bytes_per_s`` allows for ``disk_bytes_per_token``
    (``None`` where either is unknown or nothing is read)."""
    if not disk_bytes_per_token or not read_bytes_per_s or disk_bytes_per_token <= 0:
        return None
    return read_bytes_per_s / disk_bytes_per_token


def seconds_per_token(plan: ExecutionPlan, layout: ModelLayout, cost: DeviceCost,
                      disk_bytes_per_s: float | None) -> float:
    """A rough decode time per token on the device: the rule of
    :func:`edgert_core.plan.estimated_seconds_per_token` (every weight computed once; streamed
    weights loaded after the compute, or behind it with prefetch), with the bytes ``cost`` reads
    from disk loaded at the disk's measured speed and the rest of the streamed bytes at memory
    speed. It never beats the disk bound (disk bytes over the bandwidth)."""
    streamed = plan.streamed_bytes_per_token(layout)
    disk = cost.disk_bytes_per_token
    if not streamed or not disk or not disk_bytes_per_s:
        return estimated_seconds_per_token(plan, layout)
    load_seconds = (streamed - disk) / NOMINAL_LOAD_BYTES_PER_S + disk / disk_bytes_per_s
    return estimated_seconds_per_token(plan, layout, load_bytes_per_s=streamed / load_seconds)
