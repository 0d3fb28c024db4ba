"""Decode speed and peak memory of SmolLM2-135M-Instruct Q4_1: the ``neon`` backend against the
``numpy`` backend and, when installed, llama-cpp-python on the same file and thread count.

Each engine runs in its own fresh process, so its peak RSS (``VmHWM``, from the OS) is its own.
Decode tok/s counts the greedy tokens after the first (the first includes the prefill).

    python plugins/neon_kernels/bench/bench_decode.py [--model PATH] [--threads N] [--tokens 64]
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


def run_edgert(backend: str, model: str, threads: int, tokens: int) -> dict[str, Any]:
    from edgert_core.api import load_model

    m = load_model(model, backend=backend, max_context=512)
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
        "first_token_s": times[0] - start,
        "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]),
    }


def run_llama_cpp(model: str, threads: int, tokens: int) -> dict[str, Any]:
    llama_cpp = importlib.import_module("llama_cpp")
    lowlevel = importlib.import_module("llama_cpp.llama_cpp")

    default_params = lowlevel.llama_model_default_params

    def params_without_extra_bufts() -> Any:  # its AMX buffer types crash on this machine
        p = default_params()
        p.use_extra_bufts = False
        return p

    setattr(lowlevel, "llama_model_default_params", params_without_extra_bufts)  # noqa: B010
    llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_ctx=512, verbose=False)
    times = []
    start = time.perf_counter()
    for _ in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, stream=True):
        times.append(time.perf_counter())
    return {
        "engine": "llama-cpp-python",
        "path": "llama.cpp",
        "first_token_s": times[0] - start,
        "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]),
    }


def child(engine: str, model: str, threads: int, tokens: int) -> None:
    if engine == "llama-cpp":
        res = run_llama_cpp(model, threads, tokens)
    else:
        res = run_edgert(engine, model, threads, tokens)
    res["peak_rss_mb"] = peak_rss_bytes() / 2**20
    print(json.dumps(res))


def default_model() -> str:
    from edgert_core.pull import model_path

    return os.environ.get("EDGERT_SMOLLM2_GGUF") or str(model_path("smollm2"))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="GGUF file (default: the pulled smollm2)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="runs per engine; the best is reported")
    ap.add_argument("--engines", default="neon,numpy,llama-cpp")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    model = args.model or default_model()
    if args.child:
        child(args.child, model, args.threads, args.tokens)
        return
    results = []
    for engine in args.engines.split(","):
        if engine == "llama-cpp" and importlib.util.find_spec("llama_cpp") is None:
            print("llama-cpp-python is not installed: skipped", file=sys.stderr)
            continue
        runs = []
        for _ in range(args.repeat):
            cmd = [sys.executable, __file__, "--child", engine, "--model", model,
                   "--threads", str(args.threads), "--tokens", str(args.tokens)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{engine} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                break
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if runs:
            best = max(runs, key=lambda r: r["decode_tok_s"])
            best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
            best["runs_tok_s"] = [round(r["decode_tok_s"], 1) for r in runs]
            results.append(best)
    if args.json:
        print(json.dumps({"threads": args.threads, "tokens": args.tokens, "results": results}, indent=1))
        return
    print(f"SmolLM2-135M Q4_1, {args.threads} threads, {args.tokens} greedy tokens, best of {args.repeat}")
    print(f"{'engine':20s} {'path':10s} {'decode tok/s':>12s} {'peak RSS MB':>11s}  runs")
    for r in results:
        print(f"{r['engine']:20s} {r['path']:10s} {r['decode_tok_s']:12.1f} "
              f"{r['peak_rss_mb']:11.1f}  {r['runs_tok_s']}")


if __name__ == "__main__":
    main()
