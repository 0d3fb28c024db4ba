"""What the operating system says this process holds: current and peak resident set size (RSS).

* Current RSS is the second field of ``/proc/self/statm`` (pages) on Linux, psutil's elsewhere (this
  module imports psutil, about 1 MiB of RSS, only there).
* Peak RSS is ``VmHWM`` from ``/proc/self/status`` on Linux (kernel's high-water mark of RSS). Elsewhere
  it is ``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on macOS), or psutil's
  ``peak_wset`` on Windows.
* The peak can be reset only on Linux: writing ``5`` to ``/proc/self/clear_refs`` sets ``VmHWM`` back
  to the current RSS (Linux 4.0+; checked on the dev machine, kernel 6.18; not yet on a Pi).
  Where that fails, the peak stays the peak since the process started (the engine then reports
  ``peak_scope == "process"``). The reset is process-wide: two measurements in one process interfere.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_STATM = Path("/proc/self/statm")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_PROCESS: Any = None  # a psutil.Process, made on first use where /proc/self/statm is missing


def _process() -> Any:
    global _PROCESS
    if _PROCESS is None:
        import psutil

        _PROCESS = psutil.Process()
    return _PROCESS


def current_rss_bytes() -> int:
    """Resident set size of this process now, in bytes."""
    try:
        fields = _STATM.read_bytes().split()
    except OSError:
        fields = []
    if len(fields) >= 2 and fields[1].isdigit():
        return int(fields[1]) * resource.getpagesize()
    return int(_process().memory_info().rss)


def _status_kib(field: str) -> int | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
    return None


def peak_rss_bytes() -> int:
    """Highest RSS of this process since it started or since the last successful
    :func:`reset_peak_rss`, in bytes."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    if sys.platform == "win32":  # pragma: no cover - not a target, kept for completeness
        return int(getattr(_process().memory_info(), "peak_wset", current_rss_bytes()))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def reset_peak_rss() -> bool:
    """Set the peak RSS back to the current RSS. Returns False where the OS cannot (then
    :func:`peak_rss_bytes` keeps counting from the process's start)."""
    if _status_kib("VmHWM") is None:
        return False
    try:
        with _CLEAR_REFS.open("w") as f:
            f.write("5")
    except OSError:
        return False
    return True
