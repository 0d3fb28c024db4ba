"""The typer application and what every command shares: presets, errors, JSON output.

Commands live in their own modules and register on :data:`app`; they only parse, call the library
and print.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import typer

from edgert_core.backends.base import usable_cpus
from edgert_core.config import load_preset, threads_warning
from edgert_core.errors import ConfigError, EdgeRTError

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


ActivationsOption = typer.Option(
    None,
    "--activations",
    help="Precision of the activations in the products: f32 (exact, the default) or q8 (int8, "
    "faster and approximate; neon backend).",
)

KVCacheOption = typer.Option(
    "f32",
    "--kv-cache",
    help="Precision of the KV cache: f32 (exact, the default), f16 (half the bytes) or q8_0 "
    "(GGUF Q8_0 blocks, about a quarter; head_dim a multiple of 32). Counts in the budget.",
)


GovernorOption = typer.Option(
    "adaptive",
    "--governor",
    help="What adapts the run to the machine while it generates: adaptive (the default: the "
    "budget follows free memory and memory pressure, heat lowers threads then paces tokens), "
    "another installed governor, or none (adaptation off).",
)

ClusterOption = typer.Option(
    None,
    "--cluster",
    help="Run the layers as a pipeline on Dask workers: local:N starts N worker processes on "
    "loopback; else a scheduler address such as tcp://HOST:8786 (needs edgert-core[cluster]).",
)

WorkerBudgetOption = typer.Option(
    None,
    "--worker-budget",
    help="With --cluster: each worker's memory budget, e.g. 1G; default: its Dask memory limit "
    "less what it holds and a 10 percent margin.",
)

SoftTempOption = typer.Option(
    None,
    "--soft-temp-limit",
    help="Temperature (°C) above which the governor lowers threads, then paces tokens "
    "(default 80).",
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


def notice(message: str) -> None:
    """One line for the user on stderr, prefixed ``edge-rt:`` (stdout is for the output)."""
    typer.echo(f"edge-rt: {message}", err=True)


def option_name(ctx: typer.Context, key: str, config: Path | None) -> str:
    """How to name the option ``key`` in a message: as the user typed it (``--max-tokens``) or,
    when its value came from the preset, as the preset's key and file (``max_tokens in x.toml``)."""
    source = ctx.get_parameter_source(key)
    if config is not None and (source is None or source.name == "DEFAULT"):
        return f"{key} in {config}"
    param = next((p for p in ctx.command.params if p.name == key), None)
    if param is not None and param.opts:
        return max(param.opts, key=len)
    return "--" + key.replace("_", "-")


def require_at_least(
    ctx: typer.Context, config: Path | None, values: dict[str, Any], key: str, minimum: int
) -> None:
    """A :class:`ConfigError` naming the option as the user gave it when ``values[key]`` is below
    ``minimum`` (``None``: not given, nothing to check)."""
    value = values.get(key)
    if value is not None and int(value) < minimum:
        raise ConfigError(
            f"{option_name(ctx, key, config)} must be at least {minimum}, got {value}."
        )


def check_sampling(ctx: typer.Context, config: Path | None, values: dict[str, Any]) -> None:
    """The sampling options' ranges, checked here so that an error names the option as typed
    (the library would name its keyword arguments)."""
    rules: tuple[tuple[str, Callable[[float], bool], str], ...] = (
        ("temperature", lambda v: v >= 0, "0 (greedy) or more"),
        ("top_k", lambda v: v >= 0, "0 (off) or more"),
        ("top_p", lambda v: 0 < v <= 1, "in (0, 1] (1.0: off)"),
    )
    for key, ok, rule in rules:
        value = values.get(key)
        if value is not None and not ok(value):
            raise ConfigError(f"{option_name(ctx, key, config)} must be {rule}, got {value}.")


def warn_threads(ctx: typer.Context, config: Path | None, threads: int | None) -> None:
    """Say on stderr when ``threads`` asks for more threads than this process has cores."""
    if threads is None:
        return
    message = threads_warning(threads, usable_cpus(), option_name(ctx, "threads", config))
    if message is not None:
        notice("warning: " + message)


def _click_exceptions() -> ModuleType:
    """The exception classes of the click that typer runs on (newer typer vendors its own)."""
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:  # pragma: no cover - typer releases that use the click package
        return importlib.import_module("click.exceptions")


def _print_click_error(exc: Any) -> None:
    """A bad option or argument, as one ``error:`` line and a pointer to ``--help``."""
    typer.echo(f"error: {exc.format_message()}", err=True)
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        typer.echo(f"(see: {ctx.command_path} --help)", err=True)


def main() -> None:
    """Console-script entry point: every error a user can cause prints one ``error:`` line (a bad
    option too, with a pointer to ``--help``) and exits with status 2, never a traceback."""
    from edgert_core import cli  # noqa: F401  (registers the commands)

    click_exc = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except EdgeRTError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except click_exc.ClickException as exc:
        if not isinstance(exc, click_exc.NoArgsIsHelpError):  # (that one has shown the help)
            _print_click_error(exc)
        raise SystemExit(exc.exit_code) from None
    if code == 130:  # typer turns Ctrl-C into exit status 130
        typer.echo("interrupted", err=True)
    if isinstance(code, int) and code != 0:
        raise SystemExit(code)
