"""Plugin discovery and the registry of strategies, backends and monitors.

The registry is built on demand by :func:`load_registry`, never at import time, so an application
that embeds the core can build its own, isolated one (with ``entry_points=False`` and its own plugin
objects). Plugins come from three places, in this order: the core's built-in plugin modules
(``DEFAULT_PLUGINS``), installed distributions' entry points in group ``edgert``, and ``extra``
plugin objects passed by the caller.

A plugin whose import or registration fails is recorded with its error (shown by ``edge-rt plugins``
and logged) and skipped; the others keep working. ``EDGERT_DISABLE_PLUGINS`` (a comma list of plugin
names) blocks plugins. ``EDGERT_TRACE_HOOKS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any, Generic, TypeVar

import pluggy

from edgert_core import hookspecs
from edgert_core.backends.base import BackendStatus, KernelBackend
from edgert_core.errors import PluginError, UnknownNameError
from edgert_core.monitors.base import SystemMonitor
from edgert_core.plan import PartitionStrategy

log = logging.getLogger("edgert_core.plugins")

CORE_DISTRIBUTION = "edgert-core"
DISABLE_ENV = "EDGERT_DISABLE_PLUGINS"
TRACE_ENV = "EDGERT_TRACE_HOOKS"

#: Built-in plugins: (plugin name, module). They register through the same hooks as any plugin.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("numpy", "edgert_core.backends.numpy_ref"),
    ("monitors", "edgert_core.monitors.builtin"),
)

#: The distributions of this project that provide strategies, named when none is installed.
STRATEGY_DISTRIBUTIONS = ("edgert-sequential", "edgert-greedy", "edgert-speculative")

KINDS: dict[str, tuple[str, type[Any]]] = {
    "strategy": ("edgert_register_strategies", PartitionStrategy),
    "backend": ("edgert_register_backends", KernelBackend),
    "monitor": ("edgert_register_monitors", SystemMonitor),
}

T = TypeVar("T")


@dataclass
class PluginInfo:
    """What ``edge-rt plugins`` shows of one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    strategies: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    monitors: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    blocked: bool = False

    @property
    def loaded(self) -> bool:
        return not self.blocked and not self.errors

    def provided(self, kind: str) -> list[str]:
        return {"strategy": self.strategies, "backend": self.backends, "monitor": self.monitors}[
            kind
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "strategies": self.strategies,
            "backends": self.backends,
            "monitors": self.monitors,
            "blocked": self.blocked,
            "errors": self.errors,
        }


@dataclass(frozen=True)
class Registered(Generic[T]):
    """A registered class and the plugin that provided it."""

    cls: type[T]
    plugin: PluginInfo


def disabled_from_env() -> set[str]:
    """Plugin names listed in ``EDGERT_DISABLE_PLUGINS``."""
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


class PluginRegistry:
    """The strategies, backends and monitors of the loaded plugins, by name."""

    def __init__(self, plugins: list[PluginInfo], manager: pluggy.PluginManager) -> None:
        self.plugins = plugins
        self.manager = manager
        self._by_kind: dict[str, dict[str, list[Registered[Any]]]] = {k: {} for k in KINDS}
        self._backend_instances: dict[str, KernelBackend] = {}

    # -- registration -------------------------------------------------------------------------
    def _add(self, kind: str, registered: Registered[Any]) -> None:
        name = registered.cls.name
        self._by_kind[kind].setdefault(name, []).append(registered)
        registered.plugin.provided(kind).append(name)

    def conflicts(self) -> list[str]:
        """One message per name registered by more than one plugin."""
        out = []
        for kind, names in self._by_kind.items():
            for name, regs in names.items():
                if len(regs) > 1:
                    out.append(_conflict_message(kind, name, regs))
        return out

    # -- lookups ------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        """Registered names of one kind (``strategy``, ``backend``, ``monitor``), sorted."""
        return sorted(self._by_kind[kind])

    def _lookup(self, kind: str, name: str) -> type[Any]:
        regs = self._by_kind[kind].get(name)
        if not regs:
            installed = ", ".join(self.names(kind)) or "none"
            plural = {"strategy": "strategies"}.get(kind, kind + "s")
            hint = ""
            if kind == "strategy" and not self.names(kind):
                hint = " Install one of " + ", ".join(STRATEGY_DISTRIBUTIONS) + "."
            auto = ""
            if self.names(kind) and kind in ("strategy", "backend"):
                auto = " Or use auto, which picks the best of them."
            raise UnknownNameError(
                f"Unknown {kind} {name!r}; installed {plural}: {installed}.{auto}{hint}"
            )
        if len(regs) > 1:
            raise PluginError(_conflict_message(kind, name, regs))
        return regs[0].cls

    def strategy(self, name: str) -> PartitionStrategy:
        """A new instance of the named strategy."""
        cls: type[PartitionStrategy] = self._lookup("strategy", name)
        return cls()

    def strategies(self) -> dict[str, PartitionStrategy]:
        """An instance of every installed strategy, by name."""
        if not self._by_kind["strategy"]:
            raise UnknownNameError(
                "No partition strategy is installed; install one of "
                + ", ".join(STRATEGY_DISTRIBUTIONS)
                + " (pip install -e plugins/sequential, for example)."
            )
        return {name: self.strategy(name) for name in self.names("strategy")}

    def backend(self, name: str) -> KernelBackend:
        """The named backend (one instance per registry)."""
        if name not in self._backend_instances:
            cls: type[KernelBackend] = self._lookup("backend", name)
            self._backend_instances[name] = cls()
        return self._backend_instances[name]

    def backends(self) -> list[KernelBackend]:
        """Every backend, highest priority first."""
        found = [self.backend(n) for n in self.names("backend")]
        return sorted(found, key=lambda b: (-b.priority, b.name))

    def monitor(self, name: str) -> SystemMonitor:
        """A new instance of the named monitor."""
        cls: type[SystemMonitor] = self._lookup("monitor", name)
        return cls()

    def monitor_names(self) -> list[str]:
        """Monitor names in registration order (built-ins first, as they registered)."""
        return list(self._by_kind["monitor"])

    def monitors(self) -> list[SystemMonitor]:
        """An instance of every monitor, in registration order."""
        return [self.monitor(n) for n in self.monitor_names()]

    def provider(self, kind: str, name: str) -> PluginInfo:
        """The plugin that registered ``name``."""
        self._lookup(kind, name)
        return self._by_kind[kind][name][0].plugin


def backend_statuses(registry: PluginRegistry) -> dict[str, BackendStatus]:
    """Every backend's status by name; a backend that cannot be built or whose ``status()`` raises
    is reported unavailable with the reason, never by raising."""
    out: dict[str, BackendStatus] = {}
    for name in registry.names("backend"):
        try:
            out[name] = registry.backend(name).status()
        except Exception as exc:  # a broken backend is shown, not fatal
            out[name] = BackendStatus(False, "none", f"{type(exc).__name__}: {exc}")
    return out


def _conflict_message(kind: str, name: str, regs: Sequence[Registered[Any]]) -> str:
    who = " and ".join(f"{r.plugin.distribution} (plugin {r.plugin.name!r})" for r in regs)
    return (
        f"The {kind} name {name!r} is registered by both {who}; uninstall one of them or block "
        f"one with {DISABLE_ENV}."
    )


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return ("unknown", "unknown")
    return (dist.metadata["Name"] or "unknown", dist.version)


def _trace(manager: pluggy.PluginManager) -> None:
    def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        names = [impl.plugin_name for impl in impls]
        print(f"[edgert hook] {hook_name} -> {names}", file=sys.stderr)

    def after(
        outcome: pluggy.Result[Any],
        hook_name: str,
        impls: Sequence[pluggy.HookImpl],
        kwargs: Mapping[str, Any],
    ) -> None:
        return None

    manager.add_hookcall_monitoring(before, after)


def load_registry(
    *,
    entry_points: bool = True,
    builtins: bool = True,
    extra: Iterable[tuple[str, object]] = (),
    disabled: Iterable[str] | None = None,
) -> PluginRegistry:
    """Build a plugin manager and registry.

    ``extra`` are ``(name, plugin object)`` pairs (a module or an object with ``@hookimpl``
    methods) registered after the others, for applications that embed the core. ``disabled``
    defaults to ``EDGERT_DISABLE_PLUGINS``.
    """
    blocked = disabled_from_env() if disabled is None else set(disabled)
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    if os.environ.get(TRACE_ENV):
        _trace(manager)

    core_version = _core_version()
    candidates: list[tuple[PluginInfo, Callable[[], object]]] = []
    if builtins:
        for name, module in DEFAULT_PLUGINS:
            info = PluginInfo(name, CORE_DISTRIBUTION, core_version, module)
            candidates.append((info, _importer(module)))
    if entry_points:
        for ep in sorted(metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=_ep_key):
            dist, version = _dist_of(ep)
            info = PluginInfo(ep.name, dist, version, ep.value)
            candidates.append((info, ep.load))
    for name, obj in extra:
        module = getattr(obj, "__name__", type(obj).__name__)
        info = PluginInfo(name, "(embedded)", "", module)
        candidates.append((info, _constant(obj)))

    plugins: list[PluginInfo] = []
    loaded: list[tuple[PluginInfo, object]] = []
    for info, load in candidates:
        plugins.append(info)
        if any(p.name == info.name for p in plugins[:-1]):
            info.errors.append(f"another plugin is already named {info.name!r}; skipped")
            continue
        if info.name in blocked:
            info.blocked = True
            manager.set_blocked(info.name)
            continue
        obj = _load_one(info, load)
        if obj is None:
            continue
        try:
            manager.register(obj, name=info.name)
            manager.check_pending()
        except Exception as exc:  # a misspelt hook or a bad marker: name the plugin, skip it
            if manager.is_registered(obj):
                manager.unregister(obj)
            _record(info, f"invalid hooks: {exc}")
            continue
        loaded.append((info, obj))

    registry = PluginRegistry(plugins, manager)
    for kind, (hook_name, base) in KINDS.items():
        for info, obj in loaded:
            others = [o for _, o in loaded if o is not obj]
            caller = manager.subset_hook_caller(hook_name, remove_plugins=others)
            accepted: list[Registered[Any]] = []

            def register(
                cls: object,
                _info: PluginInfo = info,
                _base: type[Any] = base,
                _acc: list[Registered[Any]] = accepted,
            ) -> None:
                _check_class(cls, _base, _info)
                _acc.append(Registered(cls, _info))  # type: ignore[arg-type]

            try:
                caller(register=register)
            except Exception as exc:
                _record(info, f"{hook_name} failed: {type(exc).__name__}: {exc}")
                continue
            for reg in accepted:
                registry._add(kind, reg)
    return registry


def _check_class(cls: object, base: type[Any], info: PluginInfo) -> None:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(
            f"plugin {info.name!r} registered {cls!r}, which is not a subclass of {base.__name__}"
        )
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin {info.name!r} registered {cls.__name__} without a name")


def _record(info: PluginInfo, message: str) -> None:
    info.errors.append(message)
    log.warning("edge-rt plugin %r (%s) skipped: %s", info.name, info.distribution, message)


def _load_one(info: PluginInfo, load: Callable[[], object]) -> object | None:
    try:
        return load()
    except ImportError as exc:
        _record(info, f"import failed: {exc}")
    except Exception as exc:  # a broken plugin must not take the others down
        _record(info, f"import failed: {type(exc).__name__}: {exc}")
    return None


def _importer(module: str) -> Callable[[], ModuleType]:
    return lambda: importlib.import_module(module)


def _constant(obj: object) -> Callable[[], object]:
    return lambda: obj


def _ep_key(ep: metadata.EntryPoint) -> str:
    return ep.name


def _core_version() -> str:
    try:
        return metadata.version(CORE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"
