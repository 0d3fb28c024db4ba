"""``edge-rt perplexity``: perplexity of a text, and KL divergence and top-1 agreement against a
reference backend on the same tokens (llama.cpp's ``llama-perplexity --kl-divergence``, in one run).

The math and the windowing are :mod:`edgert_core.perplexity`; this module reads the file, loads the
two models, shows progress and prints.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from edgert_core.api import Model, load_model, open_source
from edgert_core.budget import format_bytes
from edgert_core.cli.app import (
    ActivationsOption,
    ConfigOption,
    KVCacheOption,
    app,
    apply_preset,
    notice,
    print_json,
    require_at_least,
    warn_threads,
)
from edgert_core.errors import ConfigError, GenerationError, InfeasibleBudgetError, ModelError
from edgert_core.perplexity import Summary, WindowResult, evaluate, scored_per_window, window_count

DEFAULT_CTX = 512
DEFAULT_REFERENCE = "numpy"


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; one clear error when it is missing, a folder or not text."""
    if not path.exists():
        raise GenerationError(f"Text file {path} does not exist; pass a UTF-8 text file with --file.")
    if not path.is_file():
        raise GenerationError(f"{path} is not a regular file; pass a UTF-8 text file with --file.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GenerationError(
            f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded); pass a UTF-8 text file."
        ) from None
    except OSError as exc:
        raise GenerationError(f"Cannot read {path}: {exc.strerror}.") from None


def _load(values: dict[str, Any], backend: str | None, *, reference: bool) -> Model:
    try:
        return load_model(
            str(values["model"]),
            backend=backend,
            memory_budget=values["memory_budget"],
            max_context=values["window"],  # the KV cache holds one window
            threads=values["threads"],
            activations=None if reference else values["activations"],
            kv_cache="f32" if reference else values["kv_cache"],
            notify=notice,
            tune_process=True,  # the CLI owns its process (see edgert_core.engine.tuning)
        )
    except InfeasibleBudgetError as exc:  # the context is --ctx here, not --max-context
        what = "the reference" if reference else "the model"
        message = f"{exc}".replace("--max-context", "--ctx")
        raise InfeasibleBudgetError(f"For {what}: {message[0].lower()}{message[1:]}",
                                    exc.minimum_bytes) from None


def _one_at_a_time(model: Model, reference: Model, budget: int | None, logits_bytes: int) -> bool:
    """Whether the two models must take turns (each closes after its pass of a window): under a
    budget that does not hold both plans and a window's logits at once; without a budget both stay
    loaded."""
    if budget is None:
        return False
    both = model.plan.predicted_peak_bytes + reference.plan.predicted_peak_bytes
    return both + logits_bytes > budget


@contextmanager
def _progress(total: int, show: bool) -> Iterator[Any]:
    """A rich progress bar on stderr when it is a terminal (``show``); else a no-op advance."""
    if not show:
        yield lambda **_: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("perplexity"), BarColumn(), MofNCompleteColumn(),
               TextColumn("windows  {task.fields[status]}"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("windows", total=total, status="")
        yield lambda **kw: bar.update(task, advance=1, **kw)


def _report(values: dict[str, Any], model: Model, reference: Model, file_tokens: int,
            summary: Summary, one_at_a_time: bool) -> dict[str, Any]:
    return {
        "model": model.name,
        "backend": model.backend.name,
        "activations": model.activations,
        "kv_cache": model.kv_cache,
        "reference": reference.backend.name,
        "ctx": values["window"],
        "windows": summary.windows,
        "file_tokens": file_tokens,
        **summary.figures(),
        "budget_bytes": model.context.budget_bytes,
        "one_at_a_time": one_at_a_time,
    }


def _print_human(r: dict[str, Any]) -> None:
    lines = [
        f"model      {r['model']} on {r['backend']} ({r['activations']} activations, "
        f"{r['kv_cache']} KV cache) against {r['reference']}",
        f"tokens     {r['tokens']} scored: {r['windows']} windows of {r['ctx']} (second halves) of "
        f"the text's {r['file_tokens']} tokens",
        f"PPL        {r['ppl']:.4f} +/- {r['ppl_stderr']:.4f}   reference {r['reference_ppl']:.4f}",
        f"KL         mean {r['kl_mean']:.6g}   median {r['kl_median']:.6g}   99% "
        f"{r['kl_p99']:.6g}   max {r['kl_max']:.6g}",
        f"top-1      {100 * r['top1_agreement']:.2f}% of positions agree with the reference",
        f"speed      {r['tokens_per_s']:.1f} tok/s ({r['backend']}), "
        f"{r['reference_tokens_per_s']:.1f} tok/s (reference {r['reference']})",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


@app.command("perplexity")
def perplexity_command(
    ctx: typer.Context,
    model: str | None = typer.Option(
        None, "--model", "-m", help="A .gguf file, a Hugging Face folder or a pulled name (smollm2)."
    ),
    file: Path | None = typer.Option(None, "--file", "-f", help="The UTF-8 text to score."),
    window: int = typer.Option(
        DEFAULT_CTX, "--ctx", help="Tokens per window; each window's second half is scored."
    ),
    backend: str | None = typer.Option(
        None, "--backend", help="Backend of the model under test; default: the best available."
    ),
    reference: str = typer.Option(
        DEFAULT_REFERENCE, "--reference", help="Backend of the reference (fp32, exact KV cache)."
    ),
    activations: str | None = ActivationsOption,
    kv_cache: str = KVCacheOption,
    memory_budget: str | None = typer.Option(
        None, "--memory-budget", "-b",
        help="Memory budget, e.g. 256M: each model is planned for it and, when the two do not "
        "fit in it together, they take turns on each window; none: both stay loaded.",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Kernel threads, for backends that have them (neon)."
    ),
    chunks: int | None = typer.Option(
        None, "--chunks", help="Score only the first N windows (llama-perplexity's --chunks)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    config: Path | None = ConfigOption,
) -> None:
    """Perplexity of a text, with KL divergence and top-1 agreement against a reference backend
    (windows of --ctx tokens, each scored on its second half, as llama-perplexity does)."""
    values = apply_preset(ctx, config, {
        "model": model, "window": window, "backend": backend, "memory_budget": memory_budget,
        "threads": threads, "activations": activations, "kv_cache": kv_cache, "chunks": chunks,
    })
    for key, minimum in (("window", 4), ("threads", 1), ("chunks", 1)):
        require_at_least(ctx, config, values, key, minimum)
    if values["model"] is None:
        raise ConfigError(
            "edge-rt perplexity needs --model (a .gguf file, a Hugging Face folder or a pulled "
            "name such as smollm2)."
        )
    if file is None:
        raise ConfigError("edge-rt perplexity needs --file, the UTF-8 text to score.")
    text = read_text(file)
    if not text.strip():
        raise GenerationError(f"{file} is empty; a perplexity run needs text to score.")
    warn_threads(ctx, config, values["threads"])
    n_ctx = int(values["window"])

    source = open_source(str(values["model"]))  # headers only: the --ctx check before any plan
    positions = int(source.config.dims.max_position)
    if n_ctx > positions:
        raise GenerationError(
            f"--ctx {n_ctx} is more than the {positions} positions {source.name} was trained for; "
            f"use --ctx {positions} or less."
        )
    m = _load(values, values["backend"], reference=False)
    if m.tokenizer is None:
        raise ModelError(f"Model {m.name} has no tokenizer, so it cannot read a text file.")
    ids = m.encode(text)
    window_count(len(ids), n_ctx)  # the "text too short" error before the reference loads
    bos = m.tokenizer.bos_token_id
    bos_first = bos if bos is not None and ids[0] == bos else None  # the tokenizer adds BOS

    ref = _load(values, reference, reference=True)
    budget = m.context.budget_bytes
    held = scored_per_window(n_ctx) * m.config.dims.vocab * 4  # one window's logits, one model
    turns = _one_at_a_time(m, ref, budget, held)
    if not turns:  # both stay loaded: their loads do not count in the speed
        _ = (m.engine, ref.engine)  # prepares both engines
    n_windows = window_count(len(ids), n_ctx)
    if values["chunks"] is not None:
        n_windows = min(n_windows, int(values["chunks"]))
    if not as_json:
        how = ("take turns on each window" if turns else "stay loaded")
        notice(f"{m.name}: {len(ids)} tokens, {n_windows} windows of {n_ctx}; {m.backend.name} "
               f"and reference {ref.backend.name} {how}; a window's logits take "
               f"{format_bytes(held)} per model")
    summary = Summary()
    show = sys.stderr.isatty()
    results: Iterator[WindowResult] = evaluate(
        m, ref, ids, n_ctx, bos=bos_first, max_windows=values["chunks"], one_at_a_time=turns
    )
    with _progress(n_windows, show) as advance:
        for result in results:
            summary.add(result)
            advance(status=f"PPL {summary.running_ppl():.3f}")
    m.close()
    ref.close()
    report = _report(values, m, ref, len(ids), summary, turns)
    if as_json:
        print_json(report)
    else:
        _print_human(report)
