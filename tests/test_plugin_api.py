"""The versioned plugin API: ``edgert_core.plugin_api`` holds the whole contract, imports no
model-file or tokenizer library, and the registry checks the API version each plugin declares.

Plugins here are real module objects (as an entry point names a module); entry points are faked by
patching ``importlib.metadata.entry_points``, as in ``test_plugin_system.py``.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import plugin_helpers as ph
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from typer.testing import CliRunner

import edgert_core
from edgert_core import PlanningContext, PluginRegistry, hookspecs, load_registry, plan_with, synthetic_layout
from edgert_core import plugin_api as api
from edgert_core.plugins import PluginInfo, api_compatible

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tokenizers", "gguf", "safetensors", "jinja2")
#: Every plugin module shipped in this repository (the modules their entry points name and the
#: modules those import), and the example installed by test_thirdparty_plugin.py.
SHIPPED = sorted(
    [*ROOT.glob("plugins/*/edgert_*/*.py"), ROOT / "tests/thirdparty_strategy/edgert_example_strategy.py",
     ROOT / "tests/thirdparty_backend/edgert_example_backend.py"]
)
PYPROJECTS = sorted(
    [*ROOT.glob("plugins/*/pyproject.toml"), ROOT / "tests/thirdparty_strategy/pyproject.toml",
     ROOT / "tests/thirdparty_backend/pyproject.toml"]
)
#: The planning arithmetic that left ``edgert_core.__all__`` (still in edgert_core.plan / plugin_api).
ARITHMETIC = (
    "check_feasible",
    "default_head_slice",
    "estimated_seconds_per_token",
    "fixed_bytes",
    "group_stages",
    "largest_fitting",
    "make_plan",
    "minimum_budget",
    "predict_peak",
    "resident_prefix",
    "streamed_stages",
    "streaming_rank",
    "validate_plan",
)

# -- the module -----------------------------------------------------------------------------------


def test_importing_the_plugin_api_loads_no_model_file_or_tokenizer_library() -> None:
    code = (
        "import json, sys\n"
        "import edgert_core.plugin_api\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    # the same probe sees them when they are imported, so an empty list means something
    done = subprocess.run(
        [sys.executable, "-c", code.replace("import edgert_core.plugin_api", "import edgert_core.api")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "tokenizers" in json.loads(done.stdout)


def test_the_plugin_api_names_resolve_and_are_documented() -> None:
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for name in api.__all__:
        assert hasattr(api, name), name
        assert f"`{name}" in docs, f"{name} is not in docs/plugins.md"
    specs = {n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), f"{hookspecs.PROJECT}_spec")}
    assert set(api.HOOK_NAMES) == specs and len(specs) == 4
    assert re.fullmatch(r"\d+\.\d+", api.API_VERSION)
    assert edgert_core.API_VERSION == api.API_VERSION


def test_the_library_api_leaves_the_planning_arithmetic_to_the_plugin_api() -> None:
    for name in ARITHMETIC:
        assert name not in edgert_core.__all__
        assert not hasattr(edgert_core, name), f"edgert_core.{name} should be gone"
    for name in edgert_core.__all__:
        assert getattr(edgert_core, name) is not None, name
    assert edgert_core.load_model.__module__ == "edgert_core.api"
    assert callable(edgert_core.pull)  # the function, not the module of the same name
    with pytest.raises(AttributeError, match="no attribute 'make_plan'"):
        edgert_core.make_plan  # type: ignore[attr-defined]  # noqa: B018


# -- the version rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "core", "ok"),
    [
        ("1.0", "1.0", True),
        ("1.0", "1.4", True),
        ("1.4", "1.4", True),
        ("1.5", "1.4", False),
        ("2.0", "1.4", False),
        ("0.9", "1.0", False),
        ("1.10", "1.9", False),
        ("1.9", "1.10", True),
        ("1", "1.0", False),
        ("1.0.0", "1.0", False),
        ("", "1.0", False),
    ],
)
def test_api_compatible(declared: str, core: str, ok: bool) -> None:
    assert api_compatible(declared, core) is ok


# -- the registry checks the declaration ----------------------------------------------------------

UNSET = object()


def plugin_module(module_name: str, strategy_name: str, declared: object = UNSET) -> ModuleType:
    """A plugin module registering one strategy (one layer per group), with ``EDGERT_API`` set to
    ``declared`` unless it is UNSET."""

    class OneByOne(api.PartitionStrategy):
        name = strategy_name

        def plan(self, layout: api.ModelLayout, ctx: api.PlanningContext) -> api.ExecutionPlan:
            groups = [api.LayerGroup((i,)) for i in range(len(layout.layers))]
            return api.make_plan(self.name, layout, ctx, groups)

    @api.hookimpl
    def edgert_register_strategies(register: Callable[[type[api.PartitionStrategy]], None]) -> None:
        register(OneByOne)

    module = ModuleType(module_name)
    module.edgert_register_strategies = edgert_register_strategies  # type: ignore[attr-defined]
    if declared is not UNSET:
        module.EDGERT_API = declared  # type: ignore[attr-defined]
    return module


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Callable[..., PluginRegistry]:
    """Install plugin modules as entry points (name -> module) and build a registry from them."""

    def install(*modules: ModuleType) -> PluginRegistry:
        ph.install(monkeypatch, *(ph.entry_point(m.__name__, m, f"dist-{m.__name__}", "0.3.0",
                                                 value=m.__name__) for m in modules))
        return load_registry(builtins=False)

    return install


def info(registry: PluginRegistry, name: str) -> PluginInfo:
    return next(p for p in registry.plugins if p.name == name)


def test_a_plugin_declaring_this_api_loads(installed: Callable[..., PluginRegistry]) -> None:
    registry = installed(plugin_module("current", "current-one", api.API_VERSION))
    current = info(registry, "current")
    assert (current.state, current.api, current.errors, current.warnings) == ("ok", api.API_VERSION, [], [])
    plan = plan_with(registry, "current-one", synthetic_layout("gpt2-small"), PlanningContext(None))
    assert plan.n_groups == 12


#: A minor version one past the core's: a plugin written for an API newer than this core's.
NEXT_MINOR = f"{api.API_VERSION.split('.')[0]}.{int(api.API_VERSION.split('.')[1]) + 1}"


@pytest.mark.parametrize("declared", [NEXT_MINOR, "2.0", "0.9"])
def test_an_incompatible_declaration_skips_that_plugin_only(
    installed: Callable[..., PluginRegistry], caplog: pytest.LogCaptureFixture, declared: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="edgert_core.plugins"):
        registry = installed(
            plugin_module("future", "future-one", declared), plugin_module("good", "good-one", "1.0")
        )
    future = info(registry, "future")
    assert future.state == "skipped" and not future.loaded and future.api == declared
    [error] = future.errors
    assert error.startswith(f"incompatible: written for plugin API {declared}, but this edgert-core")
    assert f"provides API {api.API_VERSION}" in error and "dist-future" in error
    assert "'future'" in caplog.text
    assert registry.names("strategy") == ["good-one"]
    assert info(registry, "good").state == "ok"


def test_a_newer_core_minor_loads_older_plugins(
    installed: Callable[..., PluginRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edgert_core.hookspecs.API_VERSION", "1.3")
    registry = installed(
        plugin_module("older", "older-one", "1.0"),
        plugin_module("same", "same-one", "1.3"),
        plugin_module("newer", "newer-one", "1.4"),
    )
    assert [info(registry, n).state for n in ("older", "same", "newer")] == ["ok", "ok", "skipped"]
    assert "provides API 1.3" in info(registry, "newer").errors[0]


@pytest.mark.parametrize("declared", [1.0, "one", "1", ["1", "0"]])
def test_a_malformed_declaration_is_the_plugins_bug(
    installed: Callable[..., PluginRegistry], declared: object
) -> None:
    registry = installed(plugin_module("odd", "odd-one", declared), plugin_module("good", "good-one", "1.0"))
    odd = info(registry, "odd")
    assert odd.state == "broken" and odd.strategies == []
    [error] = odd.errors
    assert error.startswith(f"invalid EDGERT_API = {declared!r}") and f'"{api.API_VERSION}"' in error
    assert registry.names("strategy") == ["good-one"]


def test_an_undeclared_plugin_loads_as_api_1_0_with_a_warning(
    installed: Callable[..., PluginRegistry], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="edgert_core.plugins"):
        registry = installed(plugin_module("legacy", "legacy-one"))
    legacy = info(registry, "legacy")
    assert legacy.loaded and legacy.state == "warning" and legacy.api == "1.0"
    [warning] = legacy.warnings
    assert warning.startswith("unversioned: the plugin declares no EDGERT_API")
    assert f'EDGERT_API = "{api.API_VERSION}" to legacy' in warning
    assert "'legacy'" in caplog.text
    assert registry.names("strategy") == ["legacy-one"]
    assert legacy.as_dict()["warnings"] == [warning] and legacy.as_dict()["state"] == "warning"


def test_an_undeclared_plugin_is_skipped_by_a_core_of_another_major(
    installed: Callable[..., PluginRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edgert_core.hookspecs.API_VERSION", "2.0")
    legacy = info(installed(plugin_module("legacy", "legacy-one")), "legacy")
    assert legacy.state == "skipped" and "written for plugin API 1.0" in legacy.errors[0]


def test_the_declaration_of_the_module_defining_an_entry_point_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An entry point ``pkg.mod:obj`` loads ``obj``; the declaration is then read from ``pkg.mod``."""
    home = plugin_module("edgert_fake_home", "home-one", "9.0")
    monkeypatch.setitem(sys.modules, home.__name__, home)

    class Registrar:
        @api.hookimpl
        def edgert_register_strategies(self, register: Callable[[type[api.PartitionStrategy]], None]) -> None:
            home.edgert_register_strategies(register)

    Registrar.__module__ = home.__name__
    registry = load_registry(entry_points=False, builtins=False, extra=[("inner", Registrar())])
    assert info(registry, "inner").state == "skipped"
    assert "plugin API 9.0" in info(registry, "inner").errors[0]


def test_builtin_plugins_are_part_of_the_core() -> None:
    registry = load_registry(entry_points=False)
    for builtin in ("numpy", "monitors"):
        assert info(registry, builtin).state == "ok" and info(registry, builtin).warnings == []


# -- the shipped plugins --------------------------------------------------------------------------


def core_imports(path: Path) -> list[str]:
    """The ``edgert_core`` modules a file imports from."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edgert_core":
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "edgert_core"]
    return out


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_plugins_import_only_the_plugin_api(path: Path) -> None:
    assert set(core_imports(path)) <= {"edgert_core.plugin_api"}


def entry_point_modules(pyproject: Path) -> list[Path]:
    eps = tomllib.loads(pyproject.read_text())["project"]["entry-points"]["edgert"]
    out = []
    for value in eps.values():
        parts = value.split(":")[0].split(".")
        base = pyproject.parent.joinpath(*parts)
        out.append(base / "__init__.py" if base.is_dir() else base.with_suffix(".py"))
    return out


@pytest.mark.parametrize("pyproject", PYPROJECTS, ids=lambda p: p.parent.name)
def test_shipped_plugins_declare_the_api_and_pin_the_core(pyproject: Path) -> None:
    modules = entry_point_modules(pyproject)
    assert modules
    for module in modules:
        tree = ast.parse(module.read_text())
        declared = [
            node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["EDGERT_API"]
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ]
        assert len(declared) == 1 and api_compatible(declared[0], api.API_VERSION), module
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    [core] = [d for d in deps if re.match(r"edgert-core\b", d)]
    spec = SpecifierSet(core.removeprefix("edgert-core"))
    assert Version(edgert_core.__version__) in spec
    assert Version("0.2.0") not in spec and Version("1.0.0") not in spec


def test_installed_shipped_plugins_load_cleanly() -> None:
    """The plugins installed in this environment (editable, from plugins/) declare a compatible API."""
    registry = load_registry()
    shipped = [p for p in registry.plugins if p.distribution.startswith("edgert-") and p.name != "pairs"]
    names = {p.name for p in shipped}
    assert {"numpy", "monitors", "sequential", "greedy", "speculative"} <= names
    for plugin in shipped:
        assert (plugin.state, plugin.warnings) == ("ok", []), plugin
        if plugin.distribution != "edgert-core":
            assert plugin.api is not None and api_compatible(plugin.api, api.API_VERSION), plugin


def test_the_api_version_is_1_4_since_whole_groups_of_blocks_in_one_call_were_added() -> None:
    """``TensorForm`` (a backend declares its prepared form) was added in 1.1, the backends'
    ``activation_modes``/``activations`` in 1.2, the optional ``attention_block``/``mlp_block`` in
    1.3, ``LlamaLayer`` with the optional ``prepare_llama_block``/``llama_blocks`` in 1.4; the neon
    plugin uses them all and declares 1.4, the strategy plugins still declare 1.0 and load."""
    assert api.API_VERSION == "1.4"
    assert api.KernelBackend.attention_block is not None and api.KernelBackend.mlp_block is not None
    assert "LlamaLayer" in api.__all__
    assert api.NumpyBackend().llama_blocks(  # the reference has no one-call path: the default
        np.zeros((1, 4), np.float32), 1e-5, [], np.zeros((1, 1), np.float32),
        np.zeros((1, 1), np.float32), 0, interleaved=False) is None
    assert "TensorForm" in api.__all__
    assert api.KernelBackend.activation_modes == ("f32",) and api.KernelBackend.activations == "f32"
    registry = load_registry()
    if "neon" in {p.name for p in registry.plugins}:
        assert info(registry, "neon").api == "1.4"
        assert registry.backend("neon").activation_modes == ("f32", "q8")


# -- edge-rt plugins -------------------------------------------------------------------------------


def test_edge_rt_plugins_shows_states_versions_and_warnings(
    installed: Callable[..., PluginRegistry],
) -> None:
    installed(
        plugin_module("current", "current-one", "1.0"),
        plugin_module("future", "future-one", "7.0"),
        plugin_module("legacy", "legacy-one"),
    )
    from edgert_core.cli.app import app

    out = CliRunner().invoke(app, ["plugins"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert any(line.startswith("current  [ok]") and line.endswith("API 1.0") for line in lines)
    assert any(line.startswith("future  [skipped]") for line in lines)
    assert any(line.startswith("legacy  [warning]") for line in lines)
    assert "    error: incompatible: written for plugin API 7.0" in out.output
    assert "    warning: unversioned: the plugin declares no EDGERT_API" in out.output
    rows = {r["name"]: r for r in json.loads(CliRunner().invoke(app, ["plugins", "--json"]).output)}
    assert (rows["future"]["state"], rows["future"]["api"]) == ("skipped", "7.0")
    assert rows["legacy"]["warnings"] and rows["current"]["errors"] == []
