"""One llama.cpp generation for ``edge-rt benchmark --llama-cpp``, in its own process.

    python -P edgert_core/bench_llama_cpp.py --model M.gguf --prompt-ids 1,2,3 --max-tokens 32 \\
        --max-context 512 --threads 2

(or ``python -m edgert_core.bench_llama_cpp ...``). It runs llama-cpp-python on the GGUF file (the
weights ``mmap``-ed, as llama.cpp does by default): the prompt, then greedy decoding (``top_k=1``,
no repeat penalty) up to ``--max-tokens`` tokens or an end-of-generation token. It prints one JSON
line with the keys of ``edge-rt run --json`` that the benchmark reads (decode and prompt tok/s, peak
RSS ``VmHWM``, the RSS after importing llama-cpp-python as the baseline, bytes read from disk per
decoded token from ``/proc/self/io``, the token ids).

Only the standard library and llama-cpp-python are imported, never ``edgert_core``, so that the
process's RSS is llama.cpp's own: the benchmark runs this file by path with ``python -P`` (no
package ``__init__``, no script folder on ``sys.path``). A failure is one line on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install llama-cpp-python"


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes (``VmRSS``, ``VmHWM``), or ``None``."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def _read_bytes() -> int | None:
    """``read_bytes`` of ``/proc/self/io`` (as :func:`edgert_core.memory.io_stats.read_bytes`)."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "read_bytes" and value.strip().isdigit():
            return int(value.strip())
    return None


def load(llama_cpp: Any, model: str, threads: int, max_context: int) -> Any:
    """A ``llama_cpp.Llama`` on ``model`` without the extra buffer types (whose AMX buffers crash
    on some machines)."""
    lowlevel = importlib.import_module("llama_cpp.llama_cpp")
    default_params = lowlevel.llama_model_default_params

    def params_without_extra_bufts() -> Any:
        p = default_params()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    # Llama() reads llama_model_default_params from the low-level module when it is constructed.
    setattr(lowlevel, "llama_model_default_params", params_without_extra_bufts)  # noqa: B010
    return llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads,
                           n_ctx=max_context, n_batch=max(512, max_context), verbose=False)


def _is_end(llama_cpp: Any, llm: Any, token: int) -> bool:
    is_eog = getattr(llama_cpp, "llama_vocab_is_eog", None)
    vocab = getattr(getattr(llm, "_model", None), "vocab", None)
    if is_eog is not None and vocab is not None:
        return bool(is_eog(vocab, token))
    return bool(token == llm.token_eos())


def run(llama_cpp: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Load, generate and measure with the imported ``llama_cpp`` module; the report as a dict."""
    baseline = _status_bytes("VmRSS")  # after importing llama-cpp-python, before the model
    llm = load(llama_cpp, args.model, args.threads, args.max_context)
    if args.prompt_ids is not None:
        prompt = [int(p) for p in args.prompt_ids.split(",") if p.strip()]
    else:
        prompt = list(llm.tokenize(args.prompt.encode("utf-8"), add_bos=True))
    ids: list[int] = []
    stop_reason = "max_tokens"
    read_first = read_last = None
    start = time.perf_counter()
    first = last = start
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        now = time.perf_counter()
        if not ids and read_first is None:
            first, read_first = now, _read_bytes()
        if _is_end(llama_cpp, llm, int(token)):
            stop_reason = "eos"
            break
        ids.append(int(token))
        last, read_last = now, _read_bytes()
        if len(ids) >= args.max_tokens:
            break
        if len(prompt) + len(ids) >= args.max_context:
            stop_reason = "max_context"
            break
    decode_steps = max(len(ids) - 1, 0)
    decode_seconds = last - first if decode_steps else 0.0
    decode_read = (read_last - read_first) if read_first is not None and read_last is not None else None
    version = getattr(llama_cpp, "__version__", "?")
    return {
        "model": args.model,
        "model_format": "gguf",
        "backend": f"llama.cpp (llama-cpp-python {version}, mmap)",
        "strategy": "llama.cpp",
        "groups": [],
        "threads": args.threads,
        "max_context": args.max_context,
        "prompt_ids": prompt,
        "generated_ids": ids,
        "stop_reason": stop_reason,
        "prompt_tokens": len(prompt),
        "generated_tokens": len(ids),
        "prefill_seconds": first - start,
        "decode_seconds": decode_seconds,
        "prefill_tokens_per_s": len(prompt) / (first - start) if first > start else None,
        "decode_tokens_per_s": decode_steps / decode_seconds if decode_seconds > 0 else None,
        "peak_rss_bytes": _status_bytes("VmHWM"),
        "baseline_rss_bytes": baseline,
        "decode_read_bytes": decode_read,
        "read_bytes_per_token": decode_read / decode_steps if decode_read is not None and decode_steps
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", required=True, help="The .gguf file.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt-ids", help="The prompt as comma-separated token ids.")
    group.add_argument("--prompt", help="The prompt as text (tokenized by llama.cpp).")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-context", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        llama_cpp = importlib.import_module("llama_cpp")
    except ImportError as exc:
        print(f"error: the llama.cpp row needs llama-cpp-python ({exc}): {INSTALL_HINT}",
              file=sys.stderr, flush=True)
        return 2
    try:
        report = run(llama_cpp, args)
    except Exception as exc:  # a failed row says why in one line; the sweep goes on
        print(f"error: llama.cpp failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
