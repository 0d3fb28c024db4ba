"""The ``edge-rt`` command. Importing this package registers every command on the typer app."""

import edgert_core.cli.benchmark_cmd
import edgert_core.cli.inspect_cmd
import edgert_core.cli.perplexity_cmd
import edgert_core.cli.plugins_cmd
import edgert_core.cli.run_cmd
import edgert_core.cli.serve_cmd
import edgert_core.cli.status_cmd  # noqa: F401  (imported for their commands)
from edgert_core.cli.app import app, main

__all__ = ["app", "main"]
