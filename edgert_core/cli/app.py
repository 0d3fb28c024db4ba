"""The typer application and what every command shares: presets, errors, JSON output.

Commands live in their own modules and register on :data:`app`; they only parse, call the library
and print.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from edgert_core.config import load_preset
from edgert_core.errors import EdgeRTError

app = typer.Typer(
    name="edge-rt",
    help="edge-rt: run transformer language models on small devices under a strict memory budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigOption = typer.Option(
    None,
    "--config",
    "-c",
    help="TOML preset (see configs/); options given on the command line win over it.",
    exists=False,
    dir_okay=False,
)


def apply_preset(ctx: typer.Context, config: Path | None, values: dict[str, Any]) -> dict[str, Any]:
    """Return ``values`` with every option the user did not give on the command line taken from the
    preset ``config`` (keys as in :data:`edgert_core.config.SCHEMA`)."""
    if config is None:
        return values
    preset = load_preset(config)
    merged = dict(values)
    for key, value in preset.items():
        if key not in merged:
            continue  # a key this command does not use
        source = ctx.get_parameter_source(key)
        if source is None or source.name == "DEFAULT":
            merged[key] = value
    return merged


def print_json(obj: Any) -> None:
    """Print one JSON document on one line of stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


def main() -> None:
    """Console-script entry point: user errors print one line, never a traceback."""
    from edgert_core import cli  # noqa: F401  (registers the commands)

    try:
        app()
    except EdgeRTError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
