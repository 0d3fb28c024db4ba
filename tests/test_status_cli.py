"""``edgert_core.status`` and the ``edge-rt status`` command."""

from __future__ import annotations

import json
import re
from typing import ClassVar

import psutil
import pytest
from table_helpers import parse_table
from typer.testing import CliRunner

import edgert_core.cli.status_cmd  # noqa: F401  (registers the command)
from edgert_core.budget import format_bytes
from edgert_core.cli.app import app
from edgert_core.monitors import Reading, SystemMonitor
from edgert_core.status import collect_status, format_value

runner = CliRunner()
SIZE = re.compile(r"\d+(?:\.\d+)? (B|KiB|MiB|GiB)")


def sections_filled(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The status rows with each row's section name (printed on a section's first row only)."""
    filled, section = [], ""
    for row in rows:
        section = row["SECTION"] or section
        filled.append({**row, "SECTION": section})
    return filled


class GoodMonitor(SystemMonitor):
    name: ClassVar[str] = "good"

    def read(self) -> list[Reading]:
        return [Reading("good.x", "x", 3), Reading("good.gone", "gone", None, "B", "no sensor")]


class BrokenMonitor(SystemMonitor):
    name: ClassVar[str] = "broken"

    def read(self) -> list[Reading]:
        raise RuntimeError("sensor bus exploded")


# -- library --------------------------------------------------------------------------------------
def test_broken_monitor_is_an_error_section_and_others_still_read() -> None:
    status = collect_status(monitors=[BrokenMonitor(), GoodMonitor()])
    assert [s.name for s in status.sections] == ["broken", "good"]
    broken, good = status.sections
    assert broken.error == "RuntimeError: sensor bus exploded"
    assert broken.readings == []
    assert good.ok
    assert status.reading("good.x") == Reading("good.x", "x", 3)
    assert [s.name for s in status.errors] == ["broken"]


def test_as_dict_is_json_ready() -> None:
    status = collect_status(monitors=[GoodMonitor(), BrokenMonitor()])
    data = json.loads(json.dumps(status.as_dict()))
    good, broken = data["sections"]
    assert good["error"] is None
    assert good["readings"][1] == {
        "key": "good.gone", "label": "gone", "value": None, "unit": "B",
        "present": False, "note": "no sensor",
    }
    assert broken["error"].startswith("RuntimeError")


@pytest.mark.parametrize(
    ("reading", "text"),
    [
        (Reading("k", "l", 3 * 2**30, "B"), "3.0 GiB"),
        (Reading("k", "l", 512, "B"), "512 B"),
        (Reading("k", "l", None, "B", "why"), "absent"),
        (Reading("k", "l", True), "yes"),
        (Reading("k", "l", False), "no"),
        (Reading("k", "l", 12.345, "%"), "12.3%"),
        (Reading("k", "l", 48.31, "°C"), "48.3°C"),
        (Reading("k", "l", 1500.0, "MHz"), "1500.0 MHz"),
        (Reading("k", "l", 0.5), "0.50"),
        (Reading("k", "l", "Raspberry Pi 4"), "Raspberry Pi 4"),
    ],
)
def test_format_value(reading: Reading, text: str) -> None:
    assert format_value(reading) == text


def test_collect_status_from_registry_has_builtin_sections() -> None:
    status = collect_status()
    names = {s.name for s in status.sections}
    assert {"cpu", "memory", "swap", "process", "thermal", "cgroup", "throttling"} <= names
    assert status.errors == []
    total = status.reading("memory.total")
    assert total is not None and total.value == psutil.virtual_memory().total


# -- CLI ------------------------------------------------------------------------------------------
def test_status_table_has_memory_row() -> None:
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split() == ["SECTION", "READING", "VALUE", "NOTE"]
    raw = parse_table(result.output, "SECTION")
    assert [row["SECTION"] for row in raw].count("memory") == 1  # the name on its first row only
    memory = {row["READING"]: row for row in sections_filled(raw) if row["SECTION"] == "memory"}
    assert memory["total"]["VALUE"] == format_bytes(psutil.virtual_memory().total)  # human-readable
    assert SIZE.fullmatch(memory["available"]["VALUE"]), memory["available"]


def test_status_json_has_sections() -> None:
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    sections = {s["name"]: s for s in data["sections"]}
    assert {"cpu", "memory", "process"} <= set(sections)
    readings = {r["key"]: r for r in sections["memory"]["readings"]}
    assert readings["memory.total"]["unit"] == "B"
    assert readings["memory.total"]["value"] == psutil.virtual_memory().total
    thermal = sections["thermal"]["readings"]
    assert all("present" in r for r in thermal)


def test_status_help_mentions_json() -> None:
    result = runner.invoke(app, ["status", "--help"])
    assert result.exit_code == 0
    assert "--json" in result.output
    assert "Default: off" in result.output


def test_status_shows_broken_monitor_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgert_core.cli.status_cmd as status_cmd

    def fake_collect() -> object:
        return collect_status(monitors=[GoodMonitor(), BrokenMonitor()])

    monkeypatch.setattr(status_cmd, "collect_status", fake_collect)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    rows = sections_filled(parse_table(result.output, "SECTION"))
    [broken] = [row for row in rows if row["SECTION"] == "broken"]
    assert broken["READING"] == "(monitor failed)" and broken["VALUE"] == "error"
    assert "sensor bus exploded" in broken["NOTE"]
    gone = next(row for row in rows if "gone" in row["READING"])
    assert gone["VALUE"] == "absent" and gone["NOTE"] == "no sensor"
    assert "\x1b[" not in result.output  # not a terminal: no colour codes
