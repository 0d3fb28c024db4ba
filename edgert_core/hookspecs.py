"""The hook contract between the core and plugins (public API for third parties).

Every hook is a *registration* hook: the core passes a ``register`` callback and the plugin calls it
once per class it provides. Registered classes carry a ``name`` class attribute, the name users type.
A plugin needs only ``from edgert_core import hookimpl``; see ``docs/plugins.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from edgert_core.backends.base import KernelBackend
    from edgert_core.monitors import SystemMonitor
    from edgert_core.plan import PartitionStrategy

PROJECT = "edgert"
ENTRY_POINT_GROUP = "edgert"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def edgert_register_strategies(register: Callable[[type[PartitionStrategy]], None]) -> None:
    """Register partition strategies.

    Call ``register(cls)`` for each :class:`edgert_core.PartitionStrategy` subclass the plugin
    provides. ``cls.name`` must be unique across installed plugins.
    """


@hookspec
def edgert_register_backends(register: Callable[[type[KernelBackend]], None]) -> None:
    """Register kernel backends.

    Call ``register(cls)`` for each :class:`edgert_core.KernelBackend` subclass. A backend whose native
    code cannot load should still register and report ``status().available = False`` with a reason.
    """


@hookspec
def edgert_register_monitors(register: Callable[[type[SystemMonitor]], None]) -> None:
    """Register system monitors.

    Call ``register(cls)`` for each :class:`edgert_core.SystemMonitor` subclass. A monitor reports a
    sensor it cannot read as absent (value ``None``), never by raising.
    """
