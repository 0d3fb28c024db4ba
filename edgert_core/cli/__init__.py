"""The ``edge-rt`` command. Importing this package registers every command on the typer app."""

from edgert_core.cli import (  # noqa: F401  (imported for their commands)
    benchmark_cmd,
    inspect_cmd,
    plugins_cmd,
    run_cmd,
    status_cmd,
)
from edgert_core.cli.app import app, main

__all__ = ["app", "main"]
