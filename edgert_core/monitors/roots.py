"""Where the machine's pseudo-filesystems are: ``/proc`` and ``/sys``, or a fake tree standing in
for them (a Raspberry Pi simulated on a laptop, a test that rewrites a file between two readings).

``EDGERT_PROCFS_ROOT`` and ``EDGERT_SYSFS_ROOT`` name the directories used in place of ``/proc`` and
``/sys``; the layout below them is the kernel's (``<procfs>/meminfo``,
``<sysfs>/class/thermal/thermal_zone0/temp``). They are read from the environment at every call, so
a test may change them with ``monkeypatch.setenv`` at any time, and nothing read under them is
cached: every reading reads its files again.

What they redirect is what describes the *machine*: the built-in machine monitors (device model,
CPU load and frequency, memory, swap, thermal zones, cgroup, throttling, pressure) and the figures
behind ``--memory-budget auto`` (MemAvailable, the cgroup limit and charge). What describes *this
process* (its RSS and peak in ``/proc/self/status``, its I/O in ``/proc/self/io``) and what acts on
the kernel (making a memory cgroup for ``benchmark --memory-limit``) always use the real ``/proc``
and ``/sys``: a fake tree can neither measure nor limit a process.

This module imports nothing heavy: the memory helpers and the monitors both use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgert_core.errors import EdgeRTError

PROCFS_ENV = "EDGERT_PROCFS_ROOT"
SYSFS_ENV = "EDGERT_SYSFS_ROOT"
REAL_PROCFS = Path("/proc")
REAL_SYSFS = Path("/sys")


class MonitorRootError(EdgeRTError):
    """``EDGERT_PROCFS_ROOT`` or ``EDGERT_SYSFS_ROOT`` names something that is not a directory."""


#: Root values already seen to be directories: checked once, not at every reading (a reading of
#: the machine monitors is a few dozen small reads; a stat per root per monitor would add a tenth).
_checked: set[str] = set()


def _root(env: str, default: Path) -> Path:
    """The directory ``env`` names (relative to the working directory if relative), or ``default``
    when it is unset or empty. Raises :class:`MonitorRootError` for a path that is not a directory:
    every sensor under it would read as absent, which looks like a bare machine, not a typo."""
    value = os.environ.get(env, "").strip()
    if not value:
        return default
    path = Path(value).expanduser()
    if value not in _checked:
        if not path.is_dir():
            raise MonitorRootError(
                f"{env}={value} is not a directory; point it at a fake tree laid out like "
                f"{default} (see docs/monitors.md) or unset it to read the real {default}."
            )
        _checked.add(value)
    return path


def procfs_root() -> Path:
    """The directory read as ``/proc`` for the machine's figures: ``$EDGERT_PROCFS_ROOT``, default
    ``/proc``."""
    return _root(PROCFS_ENV, REAL_PROCFS)


def sysfs_root() -> Path:
    """The directory read as ``/sys`` for the machine's figures: ``$EDGERT_SYSFS_ROOT``, default
    ``/sys``."""
    return _root(SYSFS_ENV, REAL_SYSFS)


def is_real(procfs: Path, sysfs: Path) -> bool:
    """Whether ``procfs`` and ``sysfs`` are the live machine's ``/proc`` and ``/sys``: only then may
    a monitor also ask psutil or run a command (``vcgencmd``) for what the files do not say."""
    return _same(procfs, REAL_PROCFS) and _same(sysfs, REAL_SYSFS)


def is_real_sysfs(sysfs: Path) -> bool:
    """Whether ``sysfs`` is the live machine's ``/sys`` (mount points there need no moving)."""
    return _same(sysfs, REAL_SYSFS)


def simulated() -> bool:
    """Whether either environment root points away from the real ``/proc`` or ``/sys``."""
    return not is_real(procfs_root(), sysfs_root())


def _same(path: Path, real: Path) -> bool:
    """Whether ``path`` names ``real`` (``/proc/``, ``/sys/.``; relative to the working directory if
    relative), without touching the disk: a symbolic link to ``/proc`` counts as a fake tree."""
    return path == real or os.path.normpath(os.path.abspath(path)) == str(real)
