"""``edge-rt serve``: the OpenAI-compatible HTTP server (needs the ``serve`` extra)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgert_core.budget import MemoryBudget
from edgert_core.cli.app import (
    ActivationsOption,
    ConfigOption,
    GovernorOption,
    KVCacheOption,
    SoftTempOption,
    app,
    apply_preset,
    notice,
    require_at_least,
    warn_threads,
)
from edgert_core.cli.run_cmd import MODEL_HELP, _describe, _load
from edgert_core.errors import ConfigError
from edgert_core.plan import DEFAULT_PREFILL_CHUNK

DEFAULT_SERVE_CONTEXT = 2048  # as edge-rt chat: a server mostly holds conversations


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on; anything but loopback is reachable from "
        "other machines (a warning says so)."
    ),
    port: int = typer.Option(8080, "--port", help="TCP port; 0 picks a free one (the address is shown)."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="EDGERT_API_KEY",
        help="Require 'Authorization: Bearer KEY' on every endpoint but /health "
        "(or set EDGERT_API_KEY, which keeps it off the command line).",
    ),
    max_queue: int = typer.Option(
        16, "--max-queue", help="Requests that may wait for the engine; beyond them, 503 + Retry-After."
    ),
    max_body: str = typer.Option("1M", "--max-body", help="Largest request body, e.g. 1M, 256K."),
    shutdown_timeout: float = typer.Option(
        10.0, "--shutdown-timeout",
        help="Seconds requests in flight may take to finish after Ctrl-C/SIGTERM before they are cancelled.",
    ),
    model_id: str | None = typer.Option(
        None, "--model-id", help="The model name /v1/models shows; default: the model's own name."
    ),
    max_context: int = typer.Option(
        DEFAULT_SERVE_CONTEXT, "--max-context", help="Tokens of context (sizes the KV cache)."
    ),
    prefill_chunk: int = typer.Option(
        DEFAULT_PREFILL_CHUNK, "--prefill-chunk", help="Prompt tokens per prefill step under a budget."
    ),
    backend: str | None = typer.Option(None, "--backend", help="Kernel backend; default: the best one."),
    strategy: str = typer.Option("auto", "--strategy", "-s", help="Partition strategy, or auto."),
    memory_budget: str | None = typer.Option(
        None, "--memory-budget", "-b",
        help="Memory budget, e.g. 256M, 1G, auto; none: all resident (auto where the machine "
        "cannot hold that).",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Kernel threads, for backends that have them (neon)."
    ),
    activations: str | None = ActivationsOption,
    kv_cache: str = KVCacheOption,
    governor: str = GovernorOption,
    soft_temp_limit: float | None = SoftTempOption,
    log_level: str = typer.Option("warning", "--log-level",
                                  help="uvicorn's log level: warning, info (with access log: debug)."),
    config: Path | None = ConfigOption,
) -> None:
    """Serve a model over OpenAI's HTTP API: /v1/chat/completions, /v1/completions, /v1/models,
    /health and /metrics, on 127.0.0.1 unless --host says otherwise."""
    values = apply_preset(ctx, config, {
        "model": model, "max_context": max_context, "prefill_chunk": prefill_chunk,
        "backend": backend, "strategy": strategy, "memory_budget": memory_budget, "threads": threads,
        "activations": activations, "kv_cache": kv_cache, "governor": governor,
        "soft_temp_limit": soft_temp_limit,
    })
    for key, minimum in (("max_context", 2), ("prefill_chunk", 1), ("threads", 1), ("max_queue", 0)):
        require_at_least(ctx, config, {**values, "max_queue": max_queue}, key, minimum)
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}.")
    if shutdown_timeout < 0:
        raise ConfigError(f"--shutdown-timeout must be 0 or more, got {shutdown_timeout}.")
    levels = ("critical", "error", "warning", "info", "debug", "trace")
    if log_level not in levels:
        raise ConfigError(f"--log-level must be one of {', '.join(levels)}, got {log_level!r}.")
    body_limit = MemoryBudget.parse(max_body).bytes
    if api_key is not None and not api_key.strip():
        raise ConfigError("--api-key is empty; give a key, or leave the option out.")
    from edgert_core.serve import serve  # here: the serve extra loads only for this command

    warn_threads(ctx, config, values["threads"])
    m = _load(values)
    notice(_describe(m))
    given = str(values["model"] or "smollm2")
    try:
        served = serve(
            m, host=host, port=port, model_id=model_id, aliases=(given, Path(given).stem),
            api_key=api_key, max_queue=max_queue, max_body_bytes=body_limit,
            shutdown_timeout=shutdown_timeout, log_level=log_level, notify=notice,
        )
    finally:
        m.close()
    notice(f"stopped; {served} generation{'s' if served != 1 else ''} served")
