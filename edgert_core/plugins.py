"""Plugin discovery and the registry of strategies, backends and monitors.

The registry is built on demand by :func:`load_registry`, never at import time, so an application
that embeds the core can build its own, isolated one (with ``entry_points=False`` and its own plugin
objects). Plugins come from three places, in this order: the core's built-in plugin modules
(``DEFAULT_PLUGINS``), installed distributions' entry points in group ``edgert``, and ``extra``
plugin objects passed by the caller.

Each plugin declares the plugin API version it was written against (``EDGERT_API = "1.0"`` in the
module its entry point names, see :mod:`edgert_core.plugin_api`); the registry checks it. What goes
wrong with one plugin is recorded on it (shown by ``edge-rt plugins`` and logged) and the others keep
working:

- an ``ImportError`` while importing it (a missing dependency, a native extension that does not fit
  this CPU, a name this core does not have) or a declared API version this core does not provide:
  the plugin is *skipped*;
- any other exception while importing it, an invalid hook or a registration hook that raises: the
  plugin is *broken* (a bug in it), named with the exception's type and message;
- no declaration: the plugin is loaded as if it declared API 1.0, with an ``unversioned`` warning.

The core's built-in plugins are part of the core and are not checked. ``EDGERT_DISABLE_PLUGINS`` (a
comma list of plugin names) blocks plugins. ``EDGERT_TRACE_HOOKS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
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
from edgert_core.governor import Governor
from edgert_core.monitors.base import SystemMonitor
from edgert_core.plan import PartitionStrategy

log = logging.getLogger("edgert_core.plugins")

CORE_DISTRIBUTION = "edgert-core"
#: What an undeclared plugin is taken to be written against: the first versioned API.
UNVERSIONED_API = "1.0"
DISABLE_ENV = "EDGERT_DISABLE_PLUGINS"
TRACE_ENV = "EDGERT_TRACE_HOOKS"

#: Built-in plugins: (plugin name, module). They register through the same hooks as any plugin.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("numpy", "edgert_core.backends.numpy_ref"),
    ("monitors", "edgert_core.monitors.builtin"),
    ("governors", "edgert_core.builtin_governor"),
)

#: The distributions of this project that provide strategies, named when none is installed.
STRATEGY_DISTRIBUTIONS = ("edgert-sequential", "edgert-greedy", "edgert-speculative")

KINDS: dict[str, tuple[str, type[Any]]] = {
    "strategy": ("edgert_register_strategies", PartitionStrategy),
    "backend": ("edgert_register_backends", KernelBackend),
    "monitor": ("edgert_register_monitors", SystemMonitor),
    "governor": ("edgert_register_governors", Governor),
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
    governors: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    blocked: bool = False
    #: The plugin API version the plugin declares ("" when it declares none or was not imported).
    api: str = ""
    #: Problems that do not stop the plugin from loading (no API version declared).
    warnings: list[str] = field(default_factory=list)
    #: True when an error is a bug in the plugin (not a missing dependency or another API version).
    broken: bool = False

    @property
    def loaded(self) -> bool:
        return not self.blocked and not self.errors

    @property
    def state(self) -> str:
        """``blocked``, ``broken`` (a bug in the plugin), ``skipped`` (an import error or another API
        version), ``warning`` (loaded, with warnings) or ``ok``."""
        if self.blocked:
            return "blocked"
        if self.errors:
            return "broken" if self.broken else "skipped"
        return "warning" if self.warnings else "ok"

    def provided(self, kind: str) -> list[str]:
        return {"strategy": self.strategies, "backend": self.backends, "monitor": self.monitors,
                "governor": self.governors}[kind]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "strategies": self.strategies,
            "backends": self.backends,
            "monitors": self.monitors,
            "governors": self.governors,
            "blocked": self.blocked,
            "errors": self.errors,
            "state": self.state,
            "api": self.api,
            "warnings": self.warnings,
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

    def governor_names(self) -> list[str]:
        """Governor names, sorted."""
        return self.names("governor")

    def governor(self, name: str, soft_temp_c: float | None = None) -> Governor:
        """A new instance of the named governor (``soft_temp_c``: its soft temperature limit, the
        governor's default when ``None``)."""
        cls: type[Governor] = self._lookup("governor", name)
        return cls() if soft_temp_c is None else cls(soft_temp_c=soft_temp_c)

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
        if info.distribution != CORE_DISTRIBUTION and not _api_accepted(info, obj):
            continue
        try:
            manager.register(obj, name=info.name)
            manager.check_pending()
        except Exception as exc:  # a misspelt hook or a bad marker: name the plugin, skip it
            if manager.is_registered(obj):
                manager.unregister(obj)
            _record(info, f"invalid hooks: {exc}", bug=True)
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
                _record(info, f"{hook_name} failed: {type(exc).__name__}: {exc}", bug=True)
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


def _record(info: PluginInfo, message: str, *, bug: bool = False) -> None:
    info.errors.append(message)
    if bug:
        info.broken = True
        log.error(
            "edge-rt plugin %r (%s) has a bug: %s; report it to its authors or block it with %s=%s",
            info.name, info.distribution, message, DISABLE_ENV, info.name,
        )
    else:
        log.warning("edge-rt plugin %r (%s) skipped: %s", info.name, info.distribution, message)


def _load_one(info: PluginInfo, load: Callable[[], object]) -> object | None:
    """The plugin object, or ``None`` (recorded on ``info``) when importing it failed."""
    try:
        return load()
    except ImportError as exc:  # a missing dependency or a name this core lacks: skipped
        hint = ""
        if (exc.name or "").partition(".")[0] == "edgert_core":
            hint = (
                f" (the plugin was written for another edgert-core; this one provides plugin API "
                f"{hookspecs.API_VERSION} in edgert_core.plugin_api)"
            )
        _record(info, f"import failed: {exc}{hint}")
    except (Exception, SystemExit) as exc:  # a bug in the plugin must not take the others down
        _record(info, f"plugin bug: importing it raised {type(exc).__name__}: {exc}", bug=True)
    return None


_VERSION = re.compile(r"(\d+)\.(\d+)")


def api_compatible(declared: str, core: str = hookspecs.API_VERSION) -> bool:
    """Whether a plugin written against API ``declared`` runs on a core providing API ``core``: the
    same major version and a minor version no newer than the core's."""
    want, have = _VERSION.fullmatch(declared), _VERSION.fullmatch(core)
    if want is None or have is None:
        return False
    return int(want[1]) == int(have[1]) and int(want[2]) <= int(have[2])


def _declared_api(obj: object) -> object:
    """The plugin's ``EDGERT_API``: an attribute of the plugin object, else of the module that
    defines it (for an entry point naming a function or an object inside a module)."""
    if hasattr(obj, hookspecs.API_ATTRIBUTE):
        return getattr(obj, hookspecs.API_ATTRIBUTE)
    if isinstance(obj, ModuleType):
        return None
    owner = getattr(obj, "__module__", None) or type(obj).__module__
    module = sys.modules.get(owner) if isinstance(owner, str) else None
    return getattr(module, hookspecs.API_ATTRIBUTE, None)


def _api_accepted(info: PluginInfo, obj: object) -> bool:
    """Check the plugin's declared API version; record why it is not accepted."""
    core = hookspecs.API_VERSION
    attr = hookspecs.API_ATTRIBUTE
    declared = _declared_api(obj)
    if declared is None:
        declared = UNVERSIONED_API
        info.warnings.append(
            f"unversioned: the plugin declares no {attr}; it is taken as written for plugin API "
            f"{UNVERSIONED_API}; its authors should add {attr} = \"{core}\" to {info.module}"
        )
        log.warning("edge-rt plugin %r (%s): %s", info.name, info.distribution, info.warnings[-1])
    elif not isinstance(declared, str) or _VERSION.fullmatch(declared) is None:
        _record(
            info,
            f"invalid {attr} = {declared!r}: the plugin API version must be a string "
            f"\"MAJOR.MINOR\" such as \"{core}\"",
            bug=True,
        )
        return False
    info.api = declared
    if not api_compatible(declared, core):
        _record(
            info,
            f"incompatible: written for plugin API {declared}, but this edgert-core "
            f"({_core_version()}) provides API {core} (it loads plugins for "
            f"{core.partition('.')[0]}.0 to {core}); install a version of {info.distribution} "
            f"written for API {core.partition('.')[0]}.x",
        )
        return False
    return True


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
