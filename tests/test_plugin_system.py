"""The plugin system: discovery, error isolation, blocking, name conflicts, embedded registries, and
choosing a plan through the registry (named strategies and ``auto``).

Entry points are faked by patching ``importlib.metadata.entry_points`` (as pluggy's own tests patch
distributions), so nothing is installed; plugins are small objects with ``@hookimpl`` methods.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import plugin_helpers as ph
import pytest

import edgert_core
from edgert_core import (
    ExecutionPlan,
    InfeasibleBudgetError,
    LayerGroup,
    ModelLayout,
    PlanningContext,
    PlanValidationError,
    PluginError,
    PluginInfo,
    PluginRegistry,
    UnknownNameError,
    hookspecs,
    load_registry,
    plan_with,
    synthetic_layout,
)
from edgert_core.backends.numpy_ref import NumpyBackend
from edgert_core.plan import estimated_seconds_per_token
from edgert_core.planner import all_plans
from edgert_core.plugin_api import (
    PREFETCH_DEPTH,
    Action,
    Governor,
    GovernorState,
    KernelBackend,
    PartitionStrategy,
    Reading,
    SystemMonitor,
    fixed_bytes,
    hookimpl,
    make_plan,
    minimum_budget,
)

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024**2

# -- fake distributions and entry points ------------------------------------------------------


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make ``importlib.metadata.entry_points`` return the given fake entry points only."""
    return lambda *eps: ph.install(monkeypatch, *eps)


# -- fake strategies and plugins --------------------------------------------------------------


def one_by_one(
    name: str, layout: ModelLayout, ctx: PlanningContext, *, prefetch: bool = False
) -> ExecutionPlan:
    groups = [LayerGroup((i,)) for i in range(len(layout.layers))]
    plan = make_plan(name, layout, ctx, groups, prefetch=prefetch)
    if ctx.budget_bytes is not None and plan.predicted_peak_bytes > ctx.budget_bytes:
        raise InfeasibleBudgetError(f"{name} does not fit", minimum_bytes=plan.predicted_peak_bytes)
    return plan


def strategy(strategy_name: str, *, prefetch: bool = False) -> type[PartitionStrategy]:
    """A strategy streaming one layer per group (with or without prefetch)."""

    class OneByOne(PartitionStrategy):
        name = strategy_name

        def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
            return one_by_one(self.name, layout, ctx, prefetch=prefetch)

    return OneByOne


class KeepAll(PartitionStrategy):
    """Everything resident, or an error when that does not fit."""

    name = "keep-all"

    def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
        group = LayerGroup(tuple(range(len(layout.layers))), resident=True)
        plan = make_plan(self.name, layout, ctx, [group], head_resident=True)
        if ctx.budget_bytes is not None and plan.predicted_peak_bytes > ctx.budget_bytes:
            raise InfeasibleBudgetError("keep-all does not fit", minimum_bytes=0)
        return plan


class Thermometer(SystemMonitor):
    name = "fake-thermometer"

    def read(self) -> list[Reading]:
        return [Reading("t", "temperature", 40.0, "C")]


class StrategyPlugin:
    """A plugin object registering the given strategy classes."""

    def __init__(self, *classes: type[PartitionStrategy]) -> None:
        self.classes = classes

    @hookimpl
    def edgert_register_strategies(self, register: Callable[[type[PartitionStrategy]], None]) -> None:
        for cls in self.classes:
            register(cls)


class MonitorPlugin:
    @hookimpl
    def edgert_register_monitors(self, register: Callable[[type[SystemMonitor]], None]) -> None:
        register(Thermometer)


class Calm(Governor):
    name = "fake-calm"

    def step(self, readings: Mapping[str, Reading], state: GovernorState) -> Action | None:
        return None


class GovernorPlugin:
    @hookimpl
    def edgert_register_governors(self, register: Callable[[type[Governor]], None]) -> None:
        register(Calm)


class FastBackend(NumpyBackend):
    name = "fake-fast"
    priority = 5


class BackendPlugin:
    @hookimpl
    def edgert_register_backends(self, register: Callable[[type[KernelBackend]], None]) -> None:
        register(FastBackend)


class RaisingPlugin:
    @hookimpl
    def edgert_register_strategies(self, register: Callable[[type[PartitionStrategy]], None]) -> None:
        register(strategy("half-registered"))
        raise RuntimeError("boom")


class MisspeltPlugin:
    @hookimpl
    def edgert_register_strategy(self, register: Callable[[Any], None]) -> None:  # no such hook
        register(strategy("never"))


class NotAStrategyPlugin:
    @hookimpl
    def edgert_register_strategies(self, register: Callable[[Any], None]) -> None:
        register(object)


def only(plugins: Iterable[tuple[str, object]], **kwargs: Any) -> PluginRegistry:
    """A registry of exactly these plugins (no built-ins, no entry points)."""
    return load_registry(entry_points=False, builtins=False, extra=list(plugins), **kwargs)


def info(registry: PluginRegistry, name: str) -> PluginInfo:
    return next(p for p in registry.plugins if p.name == name)


# -- discovery --------------------------------------------------------------------------------


def test_builtin_plugins_register_through_the_same_hooks(installed: Callable[..., None]) -> None:
    installed()
    registry = load_registry()
    builtins = [p for p in registry.plugins if p.distribution == "edgert-core"]
    assert [p.name for p in builtins] == ["numpy", "monitors", "governors"]
    assert all(p.version == edgert_core.__version__ and p.errors == [] for p in builtins)
    assert "numpy" in registry.names("backend")
    assert registry.provider("backend", "numpy").name == "numpy"
    assert registry.names("monitor")
    assert registry.provider("governor", "adaptive").name == "governors"
    assert load_registry(builtins=False).plugins == []


def test_entry_points_are_discovered(installed: Callable[..., None]) -> None:
    installed(
        ph.entry_point("zeta", StrategyPlugin(strategy("zeta-one")), "edgert-zeta", "2.0"),
        ph.entry_point("alpha", StrategyPlugin(strategy("alpha-one")), "edgert-alpha", "1.2.3"),
    )
    registry = load_registry(builtins=False)
    assert [p.name for p in registry.plugins] == ["alpha", "zeta"]  # by entry-point name
    alpha = info(registry, "alpha")
    assert (alpha.distribution, alpha.version, alpha.module) == (
        "edgert-alpha",
        "1.2.3",
        "edgert_alpha.plugin",
    )
    assert alpha.strategies == ["alpha-one"] and alpha.loaded
    assert registry.names("strategy") == ["alpha-one", "zeta-one"]
    assert registry.provider("strategy", "zeta-one").distribution == "edgert-zeta"
    assert alpha.as_dict()["strategies"] == ["alpha-one"]


def test_monitors_register_through_their_hook(installed: Callable[..., None]) -> None:
    installed(ph.entry_point("thermo", MonitorPlugin(), "edgert-thermo"))
    registry = load_registry(builtins=False)
    assert info(registry, "thermo").monitors == ["fake-thermometer"]
    [monitor] = registry.monitors()
    assert monitor.read()[0].value == 40.0


def test_governors_register_through_their_hook(installed: Callable[..., None]) -> None:
    installed(ph.entry_point("calm", GovernorPlugin(), "edgert-calm"))
    registry = load_registry()
    assert info(registry, "calm").governors == ["fake-calm"]
    assert info(registry, "calm").as_dict()["governors"] == ["fake-calm"]
    assert registry.governor_names() == ["adaptive", "fake-calm"]  # the built-in one too
    governor = registry.governor("fake-calm", soft_temp_c=70.0)
    assert isinstance(governor, Calm) and governor.soft_temp_c == 70.0
    with pytest.raises(UnknownNameError, match="Unknown governor 'hot'; installed governors: "
                                               "adaptive, fake-calm"):
        registry.governor("hot")


def test_backends_register_through_their_hook() -> None:
    registry = load_registry(entry_points=False, extra=[("fast", BackendPlugin())])
    assert info(registry, "fast").backends == ["fake-fast"]
    assert [b.name for b in registry.backends()][:2] == ["fake-fast", "numpy"]  # by priority
    assert registry.backend("fake-fast") is registry.backend("fake-fast")


def test_entry_point_without_a_distribution(installed: Callable[..., None]) -> None:
    ep = ph.FakeEntryPoint("orphan", "orphan_mod", None, lambda: StrategyPlugin(strategy("orphan")))
    installed(ep)
    orphan = info(load_registry(builtins=False), "orphan")
    assert (orphan.distribution, orphan.version) == ("unknown", "unknown")
    assert orphan.strategies == ["orphan"]


# -- error isolation --------------------------------------------------------------------------


def test_plugin_whose_import_fails_is_skipped(
    installed: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    installed(
        ph.failing_entry_point("broken", ImportError("No module named 'edgert_broken'"), "edgert-broken"),
        ph.entry_point("good", StrategyPlugin(strategy("good-one")), "edgert-good"),
    )
    with caplog.at_level(logging.WARNING, logger="edgert_core.plugins"):
        registry = load_registry(builtins=False)
    broken = info(registry, "broken")
    assert not broken.loaded and broken.distribution == "edgert-broken"
    assert broken.errors == ["import failed: No module named 'edgert_broken'"]
    assert broken.state == "skipped" and not broken.broken
    assert "'broken'" in caplog.text and "edgert-broken" in caplog.text
    assert all(r.levelno == logging.WARNING for r in caplog.records if "'broken'" in r.getMessage())
    assert registry.names("strategy") == ["good-one"]
    assert info(registry, "good").loaded


@pytest.mark.parametrize(
    ("exc", "shown"),
    [
        (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
        (SystemExit(3), "SystemExit: 3"),
    ],
)
def test_plugin_whose_import_raises_anything_else_is_reported_as_its_bug(
    installed: Callable[..., None], caplog: pytest.LogCaptureFixture, exc: BaseException, shown: str
) -> None:
    installed(
        ph.failing_entry_point("buggy", exc, "edgert-buggy"),
        ph.entry_point("good", StrategyPlugin(strategy("good-one")), "edgert-good"),
    )
    with caplog.at_level(logging.WARNING, logger="edgert_core.plugins"):
        registry = load_registry(builtins=False)
    buggy = info(registry, "buggy")
    assert buggy.errors == [f"plugin bug: importing it raised {shown}"]
    assert buggy.state == "broken" and buggy.broken and not buggy.loaded
    [record] = [r for r in caplog.records if "'buggy'" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert "edgert-buggy" in record.getMessage() and "EDGERT_DISABLE_PLUGINS=buggy" in record.getMessage()
    assert registry.names("strategy") == ["good-one"] and info(registry, "good").state != "broken"


def test_import_error_of_a_core_name_points_at_the_plugin_api(installed: Callable[..., None]) -> None:
    def load_old_plugin() -> object:
        from edgert_core import largest_fitting  # type: ignore[attr-defined]  # left edgert_core

        return largest_fitting

    installed(ph.FakeEntryPoint("old", "edgert_old", ph.FakeDistribution("edgert-old"), load_old_plugin))
    [error] = info(load_registry(builtins=False), "old").errors
    assert error.startswith("import failed: cannot import name 'largest_fitting'")
    assert "edgert_core.plugin_api" in error and hookspecs.API_VERSION in error


def test_plugin_whose_register_hook_raises(installed: Callable[..., None]) -> None:
    installed(
        ph.entry_point("raising", RaisingPlugin(), "edgert-raising"),
        ph.entry_point("good", StrategyPlugin(strategy("good-one")), "edgert-good"),
    )
    registry = load_registry(builtins=False)
    raising = info(registry, "raising")
    assert raising.errors == ["edgert_register_strategies failed: RuntimeError: boom"]
    assert raising.state == "broken"
    assert raising.strategies == []  # nothing half-registered
    assert registry.names("strategy") == ["good-one"]


def test_misspelt_hook_fails_the_plugin_not_the_run(installed: Callable[..., None]) -> None:
    typo = MisspeltPlugin()
    installed(
        ph.entry_point("typo", typo, "edgert-typo"),
        ph.entry_point("good", StrategyPlugin(strategy("good-one")), "edgert-good"),
    )
    registry = load_registry(builtins=False)
    [error] = info(registry, "typo").errors
    assert error.startswith("invalid hooks") and "edgert_register_strategy" in error
    assert not registry.manager.is_registered(typo)
    assert registry.names("strategy") == ["good-one"]


def test_registering_something_that_is_not_a_strategy(installed: Callable[..., None]) -> None:
    installed(ph.entry_point("odd", NotAStrategyPlugin(), "edgert-odd"))
    registry = load_registry(builtins=False)
    [error] = info(registry, "odd").errors
    assert "'odd'" in error and "not a subclass of PartitionStrategy" in error
    assert registry.names("strategy") == []


def test_duplicate_strategy_name_names_both_distributions(installed: Callable[..., None]) -> None:
    installed(
        ph.entry_point("alpha", StrategyPlugin(strategy("twin"), strategy("a-only")), "edgert-alpha"),
        ph.entry_point("beta", StrategyPlugin(strategy("twin")), "edgert-beta"),
    )
    registry = load_registry(builtins=False)
    with pytest.raises(PluginError) as err:
        registry.strategy("twin")
    message = str(err.value)
    assert "edgert-alpha" in message and "edgert-beta" in message and "'twin'" in message
    assert "EDGERT_DISABLE_PLUGINS" in message
    assert registry.conflicts() == [message]
    with pytest.raises(PluginError):
        plan_with(registry, "twin", synthetic_layout("gpt2-small"), PlanningContext(None))
    assert registry.strategy("a-only").name == "a-only"  # the rest still works


def test_duplicate_plugin_name_skips_the_second(installed: Callable[..., None]) -> None:
    installed(
        ph.entry_point("same", StrategyPlugin(strategy("first")), "edgert-first"),
        ph.entry_point("same", StrategyPlugin(strategy("second")), "edgert-second"),
    )
    registry = load_registry(builtins=False)
    assert registry.names("strategy") == ["first"]
    second = next(p for p in registry.plugins if p.distribution == "edgert-second")
    assert second.errors and "already named 'same'" in second.errors[0]


def test_disable_plugins_env_blocks_them(
    installed: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    installed(
        ph.entry_point("alpha", StrategyPlugin(strategy("alpha-one")), "edgert-alpha"),
        ph.entry_point("beta", StrategyPlugin(strategy("beta-one")), "edgert-beta"),
        ph.entry_point("gamma", StrategyPlugin(strategy("gamma-one")), "edgert-gamma"),
    )
    monkeypatch.setenv("EDGERT_DISABLE_PLUGINS", " alpha, gamma ,")
    registry = load_registry(builtins=False)
    assert registry.names("strategy") == ["beta-one"]
    assert [p.name for p in registry.plugins if p.blocked] == ["alpha", "gamma"]
    assert registry.manager.is_blocked("alpha")
    assert not info(registry, "alpha").loaded and info(registry, "alpha").errors == []
    # an explicit list wins over the environment
    assert load_registry(builtins=False, disabled=[]).names("strategy") == [
        "alpha-one",
        "beta-one",
        "gamma-one",
    ]


def test_disable_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGERT_DISABLE_PLUGINS", "numpy")
    registry = load_registry(entry_points=False)
    assert "numpy" not in registry.names("backend")
    assert info(registry, "numpy").blocked


def test_embedded_registry_is_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_entry_points(**kwargs: Any) -> list[Any]:
        raise AssertionError("an embedded registry must not read entry points")

    monkeypatch.setattr(importlib.metadata, "entry_points", no_entry_points)
    mine = only([("mine", StrategyPlugin(strategy("mine-one")))])
    theirs = only([("theirs", StrategyPlugin(strategy("theirs-one")))])
    assert mine.names("strategy") == ["mine-one"] and theirs.names("strategy") == ["theirs-one"]
    assert info(mine, "mine").distribution == "(embedded)"
    assert mine.manager is not theirs.manager
    monkeypatch.undo()
    assert "mine-one" not in load_registry().names("strategy")


def test_trace_hooks_prints_every_hook_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGERT_TRACE_HOOKS", "1")
    only([("traced", StrategyPlugin(strategy("traced-one")))])
    err = capsys.readouterr().err
    assert "[edgert hook] edgert_register_strategies -> ['traced']" in err
    monkeypatch.delenv("EDGERT_TRACE_HOOKS")
    only([("quiet", StrategyPlugin(strategy("quiet-one")))])
    assert capsys.readouterr().err == ""


# -- choosing a plan --------------------------------------------------------------------------


def test_unknown_strategy_lists_the_installed_ones() -> None:
    registry = only([("p", StrategyPlugin(strategy("beta"), strategy("alpha")))])
    with pytest.raises(
        UnknownNameError,
        match=r"Unknown strategy 'nope'; installed strategies: "
        r"alpha, beta\.",
    ):
        plan_with(registry, "nope", synthetic_layout("gpt2-small"), PlanningContext(None))


def test_no_strategy_installed_names_the_packages() -> None:
    registry = only([("monitor-only", MonitorPlugin())])
    layout = synthetic_layout("smollm2-135m")
    for call in (
        lambda: registry.strategies(),
        lambda: plan_with(registry, "auto", layout, PlanningContext(256 * MiB)),
        lambda: plan_with(registry, "sequential", layout, PlanningContext(256 * MiB)),
    ):
        with pytest.raises(UnknownNameError) as err:
            call()
        for dist in ("edgert-sequential", "edgert-greedy", "edgert-speculative"):
            assert dist in str(err.value)


class Backwards(PartitionStrategy):
    name = "backwards"

    def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
        groups = [LayerGroup((i,)) for i in reversed(range(len(layout.layers)))]
        return make_plan(self.name, layout, ctx, groups)


class OwnPeak(PartitionStrategy):
    name = "own-peak"

    def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
        plan = one_by_one(self.name, layout, ctx)
        return ExecutionPlan(
            self.name, plan.groups, False, False, plan.head_slice_bytes, sum(layout.layer_bytes)
        )


class OverBudget(PartitionStrategy):
    name = "over-budget"

    def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
        group = LayerGroup(tuple(range(len(layout.layers))), resident=True)
        return make_plan(self.name, layout, ctx, [group], head_resident=True)


@pytest.mark.parametrize(
    ("cls", "why"),
    [
        (Backwards, "exactly once and in order"),
        (OwnPeak, "build plans with edgert_core.plugin_api.make_plan"),
        (OverBudget, "exceeds the budget"),
    ],
)
def test_invalid_plan_names_the_strategy(cls: type[PartitionStrategy], why: str) -> None:
    registry = only([("p", StrategyPlugin(cls))])
    with pytest.raises(PlanValidationError) as err:
        plan_with(registry, cls.name, synthetic_layout("gpt2-small"), PlanningContext(128 * MiB))
    assert f"Strategy {cls.name!r} returned an invalid plan" in str(err.value)
    assert why in str(err.value)


class Crashing(PartitionStrategy):
    """A strategy with a bug: its plan() raises something that is not an edge-rt error."""

    name = "crashing"

    def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
        plans: dict[str, ExecutionPlan] = {}
        return plans["no such key"]


def test_a_strategy_that_crashes_is_named_and_auto_uses_the_others() -> None:
    registry = only([("buggy", StrategyPlugin(Crashing)), ("good", StrategyPlugin(KeepAll))])
    layout, ctx = synthetic_layout("gpt2-small"), PlanningContext(None)
    with pytest.raises(PluginError) as err:
        plan_with(registry, "crashing", layout, ctx)
    message = str(err.value)
    assert "Strategy 'crashing' (plugin 'buggy'" in message and "KeyError" in message
    assert "EDGERT_DISABLE_PLUGINS=buggy" in message
    everything = KeepAll().plan(layout, ctx).predicted_peak_bytes
    assert plan_with(registry, "auto", layout, PlanningContext(everything)).strategy == "keep-all"
    outcomes = {o.strategy: o for o in all_plans(registry, layout, ctx)}
    assert outcomes["crashing"].plan is None and "KeyError" in str(outcomes["crashing"].error)


def auto_registry() -> PluginRegistry:
    return only(
        [("p", StrategyPlugin(KeepAll, strategy("stream"), strategy("stream-prefetch", prefetch=True)))]
    )


def test_auto_keeps_the_whole_model_resident_when_it_fits() -> None:
    layout = synthetic_layout("smollm2-135m")
    everything = KeepAll().plan(layout, PlanningContext(None)).predicted_peak_bytes
    plan = plan_with(auto_registry(), "auto", layout, PlanningContext(everything))
    assert plan.strategy == "keep-all" and plan.streamed_bytes_per_token(layout) == 0
    unbounded = plan_with(auto_registry(), "auto", layout, PlanningContext(None))
    assert unbounded.strategy == "resident" and unbounded.head_resident
    assert unbounded.groups == (LayerGroup(tuple(range(30)), resident=True),)


def test_auto_prefers_prefetch_on_a_tight_budget() -> None:
    layout = synthetic_layout("smollm2-135m")
    # one layer computing and PREFETCH_DEPTH loading ahead
    in_flight = (1 + PREFETCH_DEPTH) * layout.layer_bytes[0]
    needed = fixed_bytes(layout, PlanningContext(None)) + in_flight
    plan = plan_with(auto_registry(), "auto", layout, PlanningContext(needed))
    assert plan.strategy == "stream-prefetch" and plan.prefetch
    # below that only the plain stream fits
    plan = plan_with(auto_registry(), "auto", layout, PlanningContext(needed - 1))
    assert plan.strategy == "stream" and not plan.prefetch


def keep_resident(strategy_name: str, n_resident: int) -> type[PartitionStrategy]:
    """A strategy keeping the first ``n_resident`` layers resident and streaming the rest."""

    class KeepFirst(PartitionStrategy):
        name = strategy_name

        def plan(self, layout: ModelLayout, ctx: PlanningContext) -> ExecutionPlan:
            groups = [LayerGroup(tuple(range(n_resident)), resident=True)]
            groups += [LayerGroup((i,)) for i in range(n_resident, len(layout.layers))]
            return make_plan(self.name, layout, ctx, groups)

    return KeepFirst


def test_auto_prefers_hiding_loads_over_one_fewer_streamed_layer() -> None:
    registry = only(
        [("p", StrategyPlugin(keep_resident("keep-first", 1), strategy("stream-prefetch", prefetch=True)))]
    )
    layout = synthetic_layout("smollm2-135m")
    plan = plan_with(registry, "auto", layout, PlanningContext(600 * MiB))
    assert plan.strategy == "stream-prefetch"


def test_auto_prefers_resident_layers_when_little_is_left_to_stream() -> None:
    registry = only(
        [("p", StrategyPlugin(keep_resident("keep-most", 29), strategy("stream-prefetch", prefetch=True)))]
    )
    layout = synthetic_layout("smollm2-135m")
    plan = plan_with(registry, "auto", layout, PlanningContext(600 * MiB))
    assert plan.strategy == "keep-most"
    by_name = {
        p.strategy: p
        for p in (plan, plan_with(registry, "stream-prefetch", layout, PlanningContext(600 * MiB)))
    }
    assert estimated_seconds_per_token(by_name["keep-most"], layout) < estimated_seconds_per_token(
        by_name["stream-prefetch"], layout
    )


def test_auto_when_no_strategy_can_plan() -> None:
    registry = only([("p", StrategyPlugin(KeepAll))])
    with pytest.raises(InfeasibleBudgetError, match="No installed strategy could plan"):
        plan_with(registry, "auto", synthetic_layout("smollm2-135m"), PlanningContext(128 * MiB))


@pytest.mark.parametrize("name", ["auto", "stream"])
def test_budget_below_the_minimum_states_it(name: str) -> None:
    layout = synthetic_layout("gpt2-small")
    minimum = minimum_budget(layout, PlanningContext(None))
    with pytest.raises(InfeasibleBudgetError) as err:
        plan_with(auto_registry(), name, layout, PlanningContext(minimum - 1))
    assert err.value.minimum_bytes == minimum
    assert f"({minimum} bytes)" in str(err.value) and "73.7 MiB" in str(err.value)
    assert "--memory-budget" in str(err.value)


# -- the hook contract ------------------------------------------------------------------------


def hook_names() -> list[str]:
    return sorted(
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, f"{hookspecs.PROJECT}_spec")
    )


def test_every_hook_is_documented_and_tested() -> None:
    names = hook_names()
    assert names == ["edgert_register_backends", "edgert_register_governors",
                     "edgert_register_monitors", "edgert_register_strategies"]
    docs = (ROOT / "docs" / "plugins.md").read_text()
    here = Path(__file__).read_text()
    for name in names:
        assert re.search(rf"`{name}\(register\)`", docs), f"{name} is not documented"
        assert f"def {name}(self, register" in here, f"no plugin in this file implements {name}"
