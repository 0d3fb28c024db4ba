"""``edge-rt benchmark``: not available yet (it needs budgeted execution, a later issue)."""

from __future__ import annotations

import typer

from edgert_core.cli.app import app
from edgert_core.errors import EdgeRTError


@app.command("benchmark")
def benchmark_command(
    model: str = typer.Option("smollm2", "--model", "-m", help="Model to benchmark."),
) -> None:
    """Sweep memory budgets and strategies (not available yet: needs budgeted execution)."""
    raise EdgeRTError(
        "edge-rt benchmark is not available yet: it needs budgeted execution, which is still "
        f"being built; nothing was run for {model!r}."
    )
