"""``edge-rt status``: what the system monitors read on this machine, as a table or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from edgert_core.cli.app import app, print_json
from edgert_core.cli.tables import add_row, echo_table, make_table
from edgert_core.status import SystemStatus, collect_status, format_value

if TYPE_CHECKING:  # rich is imported when a table is drawn (see edgert_core.cli.tables)
    from rich.table import Table

HEADER = ("SECTION", "READING", "VALUE", "NOTE")


def status_rows(status: SystemStatus) -> list[tuple[str, str, str, str]]:
    """One row per reading; a failed monitor is one row with ``error`` as its value."""
    rows: list[tuple[str, str, str, str]] = []
    for section in status.sections:
        if section.error is not None:
            rows.append((section.name, "(monitor failed)", "error", section.error))
            continue
        for reading in section.readings:
            rows.append((section.name, reading.label, format_value(reading), reading.note))
    return rows


def render_table(rows: list[tuple[str, str, str, str]]) -> Table:
    """Left-aligned columns; the section name is shown on its first row only."""
    table = make_table([(header, "left") for header in HEADER])
    previous = None
    for row in rows:
        section = row[0] if row[0] != previous else ""
        previous = row[0]
        add_row(table, [section, *row[1:]])
    return table


@app.command("status")
def status(
    json_output: bool = typer.Option(
        False,
        "--json",
        help="Print one JSON object ({\"sections\": [...]}) instead of the table. "
        "Default: off (table).",
    ),
) -> None:
    """Show what the system monitors read: CPU, memory, swap, this process, temperatures, the
    container memory limit and Raspberry Pi throttling. Sensors this machine lacks show as absent."""
    result = collect_status()
    if json_output:
        print_json(result.as_dict())
        return
    echo_table(render_table(status_rows(result)))
