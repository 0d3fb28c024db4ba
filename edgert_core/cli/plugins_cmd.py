"""``edge-rt plugins``: every discovered plugin, what it provides, and its load errors."""

from __future__ import annotations

import typer

from edgert_core.cli.app import app, print_json
from edgert_core.plugins import backend_statuses, load_registry


@app.command("plugins")
def plugins_command(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of plugin objects."),
) -> None:
    """List discovered plugins: name, state, distribution, version, plugin API, what each provides,
    errors and warnings."""
    registry = load_registry()
    statuses = backend_statuses(registry)
    rows = []
    for info in registry.plugins:
        row = info.as_dict()
        row["backend_paths"] = {
            name: {"available": s.available, "path": s.path, "reason": s.reason}
            for name, s in statuses.items()
            if name in info.backends
        }
        rows.append(row)
    conflicts = registry.conflicts()
    if as_json:
        print_json(rows)
        return
    for row in rows:
        version = f" {row['version']}" if row["version"] else ""
        api = f"  API {row['api']}" if row["api"] else ""
        typer.echo(
            f"{row['name']}  [{row['state']}]  {row['distribution']}{version}  ({row['module']}){api}"
        )
        for kind in ("strategies", "backends", "monitors", "governors"):
            if row[kind]:
                typer.echo(f"    {kind}: {', '.join(row[kind])}")
        for name, s in row["backend_paths"].items():
            avail = "available" if s["available"] else f"unavailable: {s['reason']}"
            typer.echo(f"    backend {name}: path {s['path']}, {avail}")
        for err in row["errors"]:
            typer.echo(f"    error: {err}")
        for warning in row["warnings"]:
            typer.echo(f"    warning: {warning}")
    for message in conflicts:
        typer.echo(f"conflict: {message}")
