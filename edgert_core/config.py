"""TOML presets (``-c/--config FILE.toml``) for ``run``, ``benchmark`` and ``inspect``.

A preset is a flat table of option values, written with underscores (``memory_budget = "1G"``);
a command-line option given explicitly wins over the preset, and the preset over the default. An
unknown key or a value of the wrong type is a :class:`ConfigError` naming the key and the file.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgert_core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: Every key a preset may set, with the Python types it accepts and what it means.
SCHEMA: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "model path, folder or known name (smollm2)"),
    "memory_budget": ((str, int), "memory budget, e.g. 256M, 1G, 512MiB"),
    "strategy": ((str,), "partition strategy name, or auto"),
    "backend": ((str,), "kernel backend name, or auto"),
    "max_context": ((int,), "tokens of context (sizes the KV cache)"),
    "max_tokens": ((int,), "tokens to generate"),
    "temperature": ((float, int), "sampling temperature; 0 is greedy"),
    "top_k": ((int,), "sample among the k most likely tokens; 0 disables"),
    "top_p": ((float, int), "nucleus sampling threshold; 1.0 disables"),
    "seed": ((int,), "random seed"),
    "threads": ((int,), "compute threads for backends that use them"),
    "activations": ((str,), "precision of activations in the products: f32 (exact) or q8"),
    "kv_cache": ((str,), "precision of the KV cache: f32 (exact), f16 or q8_0"),
    "prefill_chunk": ((int,), "prompt tokens per prefill chunk"),
    "governor": ((str,), "what adapts a run to the machine: adaptive (default), a plugin's, or none"),
    "soft_temp_limit": ((float, int), "temperature (°C) above which the governor cools the run"),
    "cluster": ((str,), "run on Dask workers: local:N or a scheduler address (tcp://HOST:8786)"),
    "worker_budget": ((str, int), "each worker's memory budget on a cluster, e.g. 1G"),
    "sweep_memory": ((list,), 'benchmark budgets, e.g. ["64M", "1G"]'),
    "strategies": ((list,), "benchmark strategies"),
    "repeat": ((int,), "benchmark rounds (each row is its median run)"),
    "prompt": ((str,), "default prompt"),
}


def _type_names(types: tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", float: "number", list: "list", bool: "boolean"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def validate_preset(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Check a parsed preset against :data:`SCHEMA`; ``source`` names the file in errors."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in SCHEMA:
            known = ", ".join(sorted(SCHEMA))
            raise ConfigError(f"{source}: unknown key {key!r}; known keys: {known}.")
        types, _ = SCHEMA[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise ConfigError(
                f"{source}: key {key!r} must be a {_type_names(types)}, "
                f"got {type(value).__name__} {value!r}."
            )
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: key {key!r} must be a list of strings.")
        out[key] = value
    return out


def load_preset(path: str | Path) -> dict[str, Any]:
    """Read and validate one TOML preset."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"Config file {p} does not exist; pass a TOML file such as configs/rpi4_default.toml."
        )
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML ({exc}); fix the file and try again.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file; a preset must be TOML text.") from None
    return validate_preset(data, str(p))


def threads_warning(threads: int, cores: int, origin: str) -> str | None:
    """The warning to give when ``threads`` (named as ``origin``, e.g. ``--threads`` or
    ``threads in rpi4.toml``) asks for more threads than the ``cores`` this process may use; ``None``
    when it does not."""
    if threads <= cores:
        return None
    return (
        f"{origin} asks for {threads} threads but this machine gives edge-rt {cores} "
        f"core{'s' if cores != 1 else ''}; the extra threads only compete for them (use at most {cores})."
    )
