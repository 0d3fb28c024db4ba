"""System monitors: the base contract here, the built-in psutil/sysfs monitors in ``builtin``."""

from edgert_core.monitors.base import Reading, SystemMonitor

__all__ = ["Reading", "SystemMonitor"]
