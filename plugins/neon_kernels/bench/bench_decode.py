"""Decode speed and peak memory of SmolLM2-135M-Instruct Q4_1: the ``neon`` backend against the
``numpy`` backend and, when installed, llama-cpp-python on the same file, thread count, context size
(``n_ctx`` = our ``max_context``), prompt and number of greedy tokens.

Each run is a fresh process, so its peak RSS (``VmHWM``, from the OS) is its own. Engines take turns
within each round (neon, numpy, llama.cpp, neon, ...), so a noisy, shared machine slows all of them
alike; speeds are compared as ratios to llama.cpp's best run. Decode tok/s counts the greedy tokens
after the first (the first includes the prefill).

    python plugins/neon_kernels/bench/bench_decode.py [--model PATH] [--threads N] [--tokens 64]
        [--rounds 3] [--engines neon,numpy,llama-cpp] [--max-context 512]

llama-cpp-python is optional (``pip install llama-cpp-python``); without it that engine is skipped
with a note. Its extra (repacking) buffer types are turned off (``use_extra_bufts = False``): their
AMX path crashed at the first decode on the machine this was written on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPT = "The capital of France is"


def peak_rss_bytes() -> int:
    """This process's peak resident set size, from /proc (Linux) or getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_edgert(backend: str, model: str, threads: int, tokens: int, ctx: int) -> dict[str, Any]:
    from edgert_core.api import load_model

    m = load_model(model, backend=backend, max_context=ctx, tune_process=True)  # as the CLI runs
    if hasattr(m.backend, "threads"):
        m.backend.threads = threads
    ids = m.encode(PROMPT)
    times = []
    start = time.perf_counter()
    for _ in m.generate(ids, max_tokens=tokens):
        times.append(time.perf_counter())
    return {
        "engine": f"edge-rt {backend}",
        "path": m.backend.status().path,
        "tokens": len(times),
        "first_token_s": times[0] - start,
        "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]),
    }


def run_llama_cpp(model: str, threads: int, tokens: int, ctx: int) -> dict[str, Any]:
    llama_cpp = importlib.import_module("llama_cpp")
    lowlevel = importlib.import_module("llama_cpp.llama_cpp")
    default_params = lowlevel.llama_model_default_params

    def params_without_extra_bufts() -> Any:  # its AMX buffer types crash on some machines
        p = default_params()
        p.use_extra_bufts = False
        return p

    # Llama() reads llama_model_default_params from the low-level module at construction.
    setattr(lowlevel, "llama_model_default_params", params_without_extra_bufts)  # noqa: B010
    llm = llama_cpp.Llama(
        model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=ctx, verbose=False
    )
    times = []
    start = time.perf_counter()
    # Greedy (top_k=1), no stop on end-of-text or repeats so it decodes the requested count.
    for _ in llm.create_completion(
        PROMPT, max_tokens=tokens, temperature=0.0, top_k=1, repeat_penalty=1.0, stream=True
    ):
        times.append(time.perf_counter())
    return {
        "engine": "llama.cpp",
        "path": f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')}",
        "tokens": len(times),
        "first_token_s": times[0] - start,
        "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]),
    }


def child(engine: str, model: str, threads: int, tokens: int, ctx: int) -> None:
    if engine == "llama-cpp":
        res = run_llama_cpp(model, threads, tokens, ctx)
    else:
        res = run_edgert(engine, model, threads, tokens, ctx)
    res["peak_rss_mb"] = peak_rss_bytes() / 2**20
    print(json.dumps(res))


def default_model() -> str:
    from edgert_core.pull import model_path

    return os.environ.get("EDGERT_SMOLLM2_GGUF") or str(model_path("smollm2"))


def run_child(engine: str, args: argparse.Namespace, model: str) -> dict[str, Any] | None:
    """One run of ``engine`` in a fresh interpreter (with this one's ``-S`` / ``-I`` flags)."""
    flags = ["-S"] if sys.flags.no_site else []
    flags += ["-I"] if sys.flags.isolated else []
    cmd = [sys.executable, *flags, __file__, "--child", engine, "--model", model,
           "--threads", str(args.threads), "--tokens", str(args.tokens),
           "--max-context", str(args.max_context)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{engine} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="GGUF file (default: the pulled smollm2)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--max-context", type=int, default=512, help="our max_context, llama's n_ctx")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every engine once")
    ap.add_argument("--engines", default="neon,numpy,llama-cpp")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    model = args.model or default_model()
    if args.child:
        child(args.child, model, args.threads, args.tokens, args.max_context)
        return
    engines = args.engines.split(",")
    if "llama-cpp" in engines and importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python is not installed (pip install llama-cpp-python): llama.cpp skipped",
              file=sys.stderr)
        engines.remove("llama-cpp")
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    for _ in range(args.rounds):
        for engine in engines:  # alternate, so machine noise hits every engine alike
            res = run_child(engine, args, model)
            if res is not None:
                runs[engine].append(res)
    results = []
    for engine in engines:
        if not runs[engine]:
            continue
        best = dict(max(runs[engine], key=lambda r: r["decode_tok_s"]))
        best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs[engine])
        best["runs_tok_s"] = [round(r["decode_tok_s"], 1) for r in runs[engine]]
        results.append(best)
    ref = next((r for r in results if r["engine"] == "llama.cpp"), None)
    for r in results:
        r["vs_llama_cpp"] = r["decode_tok_s"] / ref["decode_tok_s"] if ref else None
    if args.json:
        print(json.dumps({"threads": args.threads, "tokens": args.tokens,
                          "max_context": args.max_context, "rounds": args.rounds,
                          "results": results}, indent=1))
        return
    print(f"{Path(model).name}: {args.threads} threads, context {args.max_context}, "
          f"{args.tokens} greedy tokens, best of {args.rounds} alternating rounds")
    print(f"{'engine':16s} {'path':26s} {'decode tok/s':>12s} {'vs llama.cpp':>12s} "
          f"{'peak RSS MB':>11s}  runs tok/s")
    for r in results:
        ratio = f"{r['vs_llama_cpp']:.2f}x" if r["vs_llama_cpp"] is not None else "-"
        print(f"{r['engine']:16s} {r['path']:26s} {r['decode_tok_s']:12.1f} {ratio:>12s} "
              f"{r['peak_rss_mb']:11.1f}  {r['runs_tok_s']}")


if __name__ == "__main__":
    main()
