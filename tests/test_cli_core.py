"""The edge-rt command as a user runs it: a subprocess, its output and exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
COMMANDS = ["run", "benchmark", "inspect", "status", "plugins", "perplexity", "serve"]


def edge_rt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edgert_core", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def test_top_level_help_lists_every_command() -> None:
    out = edge_rt("--help")
    assert out.returncode == 0, out.stderr
    for cmd in COMMANDS:
        assert cmd in out.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_option_has_help_and_defaults_show(cmd: str) -> None:
    import typer.main

    from edgert_core.cli import app

    click_cmd = typer.main.get_command(app)
    sub = click_cmd.commands[cmd]  # type: ignore[attr-defined]
    out = edge_rt(cmd, "--help", env={"COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    for param in sub.params:
        if param.param_type_name != "option":
            continue
        assert param.help, f"edge-rt {cmd} {param.opts[0]} has no help text"
        entry = option_entry(out.stdout, param.opts[0])
        if param.default is not None and param.default is not False and not param.is_flag:
            assert f"[default: {param.default}]" in entry, f"edge-rt {cmd} {param.opts[0]}: {entry!r}"


def option_entry(help_text: str, option: str) -> str:
    """The row of ``option`` in a help screen (wrapped lines joined, box lines and spaces squeezed)."""
    rows: list[str] = []
    for line in help_text.splitlines():
        cells = line.strip().strip("│").strip()
        if cells.startswith("-") or cells.startswith("╰") or not cells:
            if rows:
                break
            if cells.split(" ", 1)[0] == option:
                rows.append(cells)
        elif rows:
            rows.append(cells)
    assert rows, f"{option} is not in the help screen"
    return " ".join(" ".join(rows).split())


def test_plugins_json_lists_builtins() -> None:
    out = edge_rt("plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert isinstance(rows, list)
    by_name = {r["name"]: r for r in rows}
    assert by_name["numpy"]["distribution"] == "edgert-core"
    assert "numpy" in by_name["numpy"]["backends"]
    for key in ("name", "distribution", "version", "strategies", "backends", "monitors", "errors"):
        assert all(key in r for r in rows)


def test_disabled_plugin_shows_blocked() -> None:
    out = edge_rt("plugins", "--json", env={"EDGERT_DISABLE_PLUGINS": "numpy"})
    rows = {r["name"]: r for r in json.loads(out.stdout.strip().splitlines()[-1])}
    assert rows["numpy"]["blocked"] is True
    assert rows["numpy"]["backends"] == []


def test_inspect_plans_side_by_side_json() -> None:
    out = edge_rt("inspect", "--model", "synthetic-smollm2-135m", "--memory-budget", "64M", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["model"]["n_layers"] == 30
    assert report["planning"]["budget_bytes"] == 64 * 1024**2
    strategies = {row["strategy"] for row in report["planning"]["plans"]}
    assert strategies, "no strategy planned"
    for row in report["planning"]["plans"]:
        if row["error"] is None:
            assert row["predicted_peak_bytes"] <= 64 * 1024**2
            assert row["stage_slots"] == (3 if row["prefetch"] else 1)  # everything streams
            assert row["stages_per_token"] >= row["n_groups"] - 1
    assert report["planning"]["auto"] in strategies


def test_budget_too_small_states_minimum_without_traceback() -> None:
    out = edge_rt("inspect", "--model", "synthetic-smollm2-135m", "--memory-budget", "1M")
    assert "Traceback" not in out.stderr + out.stdout
    assert "smallest feasible budget" in out.stdout + out.stderr


def test_bad_budget_is_one_clear_error() -> None:
    out = edge_rt("inspect", "--memory-budget", "lots")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("error: Cannot read memory budget 'lots'")


def test_invalid_toml_preset_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("max_context = [\n")
    out = edge_rt("inspect", "-c", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert str(bad) in out.stderr and "invalid TOML" in out.stderr
    assert bad.read_text() == "max_context = [\n", "the user's file must not be modified"


def test_preset_applies_and_command_line_wins() -> None:
    preset = ROOT / "configs" / "constrained_2gb.toml"
    out = edge_rt("inspect", "-c", str(preset), "--model", "synthetic-smollm2-135m", "--json")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["planning"]["budget_bytes"] == 128 * 1024**2  # from the preset
    out = edge_rt(
        "inspect", "-c", str(preset), "--model", "synthetic-smollm2-135m", "-b", "256M", "--json"
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["planning"]["budget_bytes"] == 256 * 1024**2  # the command line wins
