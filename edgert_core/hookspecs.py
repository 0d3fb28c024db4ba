"""The hook contract between the core and plugins (public API for third parties).

Every hook is a *registration* hook: the core passes a ``register`` callback and the plugin calls it
once per class it provides. Registered classes carry a ``name`` class attribute, the name users type.
Plugins import this module's names through :mod:`edgert_core.plugin_api`; see ``docs/plugins.md``.

The plugin API has a version, :data:`API_VERSION` (``"MAJOR.MINOR"``). A plugin declares the version
it was written against in the attribute :data:`API_ATTRIBUTE` (``EDGERT_API = "1.0"``) of the module
its entry point names; the registry loads it when the major versions are equal and the plugin's
minor version is at most the core's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from edgert_core.backends.base import KernelBackend
    from edgert_core.governor import Governor
    from edgert_core.monitors import SystemMonitor
    from edgert_core.plan import PartitionStrategy

PROJECT = "edgert"
ENTRY_POINT_GROUP = "edgert"

#: The plugin API's version: the major version changes when a name is removed or changes meaning,
#: the minor version when one is added.
API_VERSION = "1.4"
#: The attribute in which a plugin declares the API version it was written against.
API_ATTRIBUTE = "EDGERT_API"
#: The hooks a plugin may implement.
HOOK_NAMES = ("edgert_register_strategies", "edgert_register_backends", "edgert_register_monitors",
              "edgert_register_governors")

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def edgert_register_strategies(register: Callable[[type[PartitionStrategy]], None]) -> None:
    """Register partition strategies.

    Call ``register(cls)`` for each :class:`~edgert_core.plugin_api.PartitionStrategy` subclass
    the plugin provides. ``cls.name`` must be unique across installed plugins.
    """


@hookspec
def edgert_register_backends(register: Callable[[type[KernelBackend]], None]) -> None:
    """Register kernel backends.

    Call ``register(cls)`` for each :class:`~edgert_core.plugin_api.KernelBackend` subclass. A
    backend whose native code cannot load should still register and report
    ``status().available = False`` with a reason.
    """


@hookspec
def edgert_register_monitors(register: Callable[[type[SystemMonitor]], None]) -> None:
    """Register system monitors.

    Call ``register(cls)`` for each :class:`~edgert_core.plugin_api.SystemMonitor` subclass. A
    monitor reports a sensor it cannot read as absent (value ``None``), never by raising.
    """


@hookspec
def edgert_register_governors(register: Callable[[type[Governor]], None]) -> None:
    """Register governors (since API 1.4): policies that adapt a running generation to the machine.

    Call ``register(cls)`` for each :class:`~edgert_core.plugin_api.Governor` subclass; ``cls.name``
    is what ``--governor`` takes. The engine makes one instance per model, as
    ``cls(soft_temp_c=...)``.
    """
