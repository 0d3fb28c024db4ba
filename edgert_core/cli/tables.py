"""Tables on stdout for people, drawn by ``rich``: one header line, a rule under it, and a line per
row, columns left or right aligned.

In a terminal a table takes the terminal's width (long cells wrap inside their column) and its
header is bold. Piped into a file or another program it is plain text (no colour codes) at its
natural width, one line per row, so that ``grep``/``awk`` see whole rows. Cell text is never read
as rich markup: ``[plot]`` in an error message stays as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import typer

if TYPE_CHECKING:  # rich is imported by the commands that draw a table (~2 MiB of RSS otherwise)
    from rich.table import Table

Justify = Literal["left", "right"]

_UNLIMITED = 100_000
"""Width to measure a table's natural width against (wider than any row)."""


def make_table(columns: Sequence[tuple[str, Justify]]) -> Table:
    """An empty table with these ``(header, justify)`` columns, in the style of every edge-rt table."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False, highlight=False,
                  header_style="bold")
    for header, justify in columns:
        table.add_column(Text(header), justify=justify)
    return table


def add_row(table: Table, cells: Sequence[str]) -> None:
    """Append a row of plain text cells (no markup)."""
    from rich.text import Text

    table.add_row(*(Text(cell) for cell in cells))


def echo_table(table: Table) -> None:
    """Print ``table`` on stdout: terminal width in a terminal, natural width (no wrapping) elsewhere.
    Trailing spaces are cut from every line."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        natural = console.measure(table, options=console.options.update_width(_UNLIMITED)).maximum
        console = Console(highlight=False, width=max(natural, 1), color_system=None)
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        typer.echo(line.rstrip())
