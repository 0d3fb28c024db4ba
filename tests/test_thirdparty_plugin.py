"""Real third-party plugins, a strategy and a backend, installed with pip into a fresh virtual
environment beside the core and the three strategy distributions, then found through their entry
points. No monkeypatching.

The plugins in ``tests/thirdparty_strategy/`` and ``tests/thirdparty_backend/`` are the ones printed
in ``docs/plugins.md``; a fast test here keeps them identical.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "thirdparty_strategy"
EXAMPLE_BACKEND = ROOT / "tests" / "thirdparty_backend"
TINY = ROOT / "tests" / "fixtures" / "tiny_llama"
DOCS = ROOT / "docs" / "plugins.md"
DISTRIBUTIONS = {
    "core": ROOT,
    "sequential": ROOT / "plugins" / "sequential",
    "greedy": ROOT / "plugins" / "greedy",
    "speculative": ROOT / "plugins" / "speculative",
    "example": EXAMPLE,
    "backend": EXAMPLE_BACKEND,
}
SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".*", "tests", "*.so")

PLAN_SCRIPT = """
import json
from edgert_core import MemoryBudget, PlanningContext, load_registry, plan_with, synthetic_layout

registry = load_registry()
layout = synthetic_layout("smollm2-135m")
ctx = PlanningContext(MemoryBudget.parse("256M").bytes)
plan = plan_with(registry, "pairs", layout, ctx)
auto = plan_with(registry, "auto", layout, ctx)
print(json.dumps({
    "strategy": plan.strategy,
    "groups": [list(g.layers) for g in plan.groups],
    "peak": plan.predicted_peak_bytes,
    "auto": auto.strategy,
    "strategies": registry.names("strategy"),
    "core_file": __import__("edgert_core").__file__,
}))
"""


BACKEND_SCRIPT = """
import json, sys
from edgert_core import load_model
from edgert_core.plugins import load_registry
from edgert_core.testing import check_backend

registry = load_registry()
lines = []
backend = registry.backend("f64acc")
check_backend(backend, report=lines.append)
tokens = {}
for name, strategy in (("numpy", "auto"), ("f64acc", "auto"), ("f64acc", "sequential")):
    model = load_model(sys.argv[1], backend=name, strategy=strategy, max_context=64, notify=None)
    ids = model.encode("Once upon a time")
    tokens[name + "/" + strategy] = [t.id for t in model.generate(ids, max_tokens=16) if t.id >= 0]
    model.close()
print(json.dumps({
    "class": [c.__name__ for c in type(backend).__mro__],
    "module": type(backend).__module__,
    "conformance": lines,
    "tokens": tokens,
    "auto": load_model(sys.argv[1], notify=None).backend.name,
}))
"""


def copy_sources(dest: Path) -> list[Path]:
    """Copy each distribution's sources (no build output, no tests) so that building them never
    writes into the working tree."""
    out = []
    for name, src in DISTRIBUTIONS.items():
        target = dest / name
        if name == "core":
            target.mkdir(parents=True)
            for item in ("pyproject.toml", "README.md", "LICENSE"):
                if (src / item).exists():
                    shutil.copy2(src / item, target / item)
            shutil.copytree(src / "edgert_core", target / "edgert_core", ignore=SKIP)
        else:
            shutil.copytree(src, target, ignore=SKIP)
        out.append(target)
    return out


def clean_env() -> dict[str, str]:
    """The environment without edge-rt switches or a PYTHONPATH that could reach the work tree."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("EDGERT_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_third_party_strategy_and_backend_in_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python, edge_rt = venv / "bin" / "python", venv / "bin" / "edge-rt"
    # Wheels are built here with this interpreter's setuptools (no isolated build environments to
    # download), then installed into the fresh venv (made without pip, which saves ensurepip) with
    # their dependencies in one call of this interpreter's pip.
    sources = copy_sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(wheels), *map(str, sources)], cwd=tmp_path)
    built = sorted(wheels.glob("*.whl"))
    assert len(built) == len(sources)
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         *map(str, built)], cwd=tmp_path)

    plugins: list[dict[str, Any]] = json.loads(run([str(edge_rt), "plugins", "--json"],
                                                   cwd=tmp_path))
    by_name = {p["name"]: p for p in plugins}
    example = by_name["pairs"]
    assert example["distribution"] == "edgert-example-strategy"
    assert example["version"] == "0.1.0"
    assert example["module"] == "edgert_example_strategy"
    assert example["strategies"] == ["pairs"]
    assert example["errors"] == [] and example["blocked"] is False
    assert (example["state"], example["api"], example["warnings"]) == ("ok", "1.0", [])
    for plugin, dist, strategy in [
        ("sequential", "edgert-sequential", "sequential"),
        ("greedy", "edgert-greedy", "greedy-grouping"),
        ("speculative", "edgert-speculative", "speculative-prefetch"),
    ]:
        assert by_name[plugin]["distribution"] == dist
        assert by_name[plugin]["strategies"] == [strategy]
        assert (by_name[plugin]["state"], by_name[plugin]["api"]) == ("ok", "1.0")

    backend = by_name["f64acc"]
    assert backend["distribution"] == "edgert-example-backend"
    assert backend["backends"] == ["f64acc"]
    assert (backend["state"], backend["api"], backend["errors"], backend["warnings"]) == ("ok", "1.1", [], [])
    found = json.loads(run([str(python), "-c", BACKEND_SCRIPT, str(TINY)], cwd=tmp_path))
    assert found["module"] == "edgert_example_backend"
    assert "NumpyBackend" not in found["class"] and "KernelBackend" in found["class"]
    assert found["conformance"] and all(line.split()[-1] == "ok" or line.endswith("(not fused)")
                                        for line in found["conformance"])
    tokens = found["tokens"]
    assert len(tokens["numpy/auto"]) == 16
    assert tokens["f64acc/auto"] == tokens["f64acc/sequential"] == tokens["numpy/auto"]
    assert found["auto"] == "numpy"

    result = json.loads(run([str(python), "-c", PLAN_SCRIPT], cwd=tmp_path))
    assert result["core_file"].startswith(str(venv))  # the installed core, not the work tree
    assert result["strategy"] == "pairs"
    assert result["groups"] == [[i, i + 1] for i in range(0, 30, 2)]
    assert result["peak"] <= 256 * 1024**2
    assert result["strategies"] == [
        "greedy-grouping", "pairs", "sequential", "speculative-prefetch"]
    assert result["auto"] in result["strategies"]

    blocked_env = clean_env() | {"EDGERT_DISABLE_PLUGINS": "pairs"}
    blocked = json.loads(run([str(edge_rt), "plugins", "--json"], cwd=tmp_path, env=blocked_env))
    assert next(p for p in blocked if p["name"] == "pairs")["blocked"] is True

    # Uninstalling one plugin leaves the rest working.
    run([sys.executable, "-m", "pip", "--python", str(python), "uninstall", "--yes", "--quiet",
         "edgert-greedy"], cwd=tmp_path)
    after = {p["name"]: p for p in json.loads(run([str(edge_rt), "plugins", "--json"], cwd=tmp_path))}
    assert "greedy" not in after
    assert after["pairs"]["strategies"] == ["pairs"]
    assert after["sequential"]["strategies"] == ["sequential"]
    result = json.loads(run([str(python), "-c", PLAN_SCRIPT], cwd=tmp_path))
    assert result["strategies"] == ["pairs", "sequential", "speculative-prefetch"]
    assert result["groups"] == [[i, i + 1] for i in range(0, 30, 2)]


def doc_examples() -> dict[str, str]:
    """Code blocks in docs/plugins.md announced by ``<!-- example: FILE -->``."""
    pattern = re.compile(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)
    return dict(pattern.findall(DOCS.read_text()))


def test_docs_show_exactly_the_tested_plugins() -> None:
    examples = doc_examples()
    assert sorted(examples) == [
        "thirdparty_backend/edgert_example_backend.py",
        "thirdparty_backend/pyproject.toml",
        "thirdparty_governor/edgert_example_governor.py",
        "thirdparty_strategy/edgert_example_strategy.py",
        "thirdparty_strategy/pyproject.toml",
    ]
    for name, text in examples.items():
        assert text == (ROOT / "tests" / name).read_text(), f"docs/plugins.md differs from tests/{name}"


def test_the_example_governor_paces_a_run_on_a_warm_pi(pi4: Path) -> None:
    """The governor of docs/plugins.md, registered through its hook, reads the fake Pi's
    temperature (75 °C: within 10 °C of the 80 °C limit) and paces the run from its first pass."""
    import importlib.util

    from edgert_core.api import load_model
    from edgert_core.plugins import load_registry

    (pi4 / "sys" / "class" / "thermal" / "thermal_zone0" / "temp").write_text("75000\n")
    spec = importlib.util.spec_from_file_location(
        "edgert_example_governor", ROOT / "tests" / "thirdparty_governor" / "edgert_example_governor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    registry = load_registry(extra=[("early-cooling", module)])
    assert "early-cooling" in registry.governor_names()
    with load_model(TINY, backend="numpy", registry=registry, governor="early-cooling",
                    notify=None) as model:
        gen = model.generate([5, 6, 7], max_tokens=4)
        gen.result()
    assert [(e.kind, e.token_index, e.reason) for e in gen.events] == [
        ("pace", 0, "75.0 °C is within 10 °C of the limit")]
    assert gen.stats.decode_seconds >= 3 * 0.1  # three decoded tokens, each after a 0.1 s pause
