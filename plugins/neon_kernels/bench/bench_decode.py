"""Decode and prompt speed, peak memory and closeness to the fp32 reference of SmolLM2-135M-Instruct
Q4_1: the ``neon`` backend in both activation modes (``f32``: exact; ``q8``: int8 activations)
against the ``numpy`` backend and, when installed, llama-cpp-python, on the same file, thread count,
context size (``n_ctx`` = our ``max_context``) and prompt token ids.

Rows (engines): ``neon-f32``, ``neon-q8``, ``numpy``, ``llama-cpp``. Per row:

- prompt tok/s: the prompt (``--prompt-tokens``, default 64 token ids of a fixed English text)
  divided by the time to the first generated token (prefill and one head), the model loaded
  before the clock starts in both engines (``Model.engine``; ``llama_cpp.Llama()``);
- decode tok/s: the greedy tokens after the first (``--tokens``, default 64) over their time;
- ratios of both to llama.cpp's in the same run;
- peak RSS (``VmHWM`` from the OS) of the timed run's own fresh process;
- KL: the mean over the positions of a fixed text (``--kl-tokens`` token ids, default 256) of
  ``KL(numpy || engine)`` between next-token distributions (``edgert_core.perplexity``), each engine's
  logits of every position from one pass over the text, in a separate fresh process so they do not
  count in the timed run's RSS;
- Python overhead per decoded token (edge-rt rows): wall time per token minus the time the calling
  thread spent inside the C ops (``edgert_neon_kernels.kernels.c_time``: a monotonic clock read at
  entry and exit of every C op), so it is everything the interpreter does around the kernels.

The edge-rt rows run with ``governor="none"`` (no adaptation, as llama.cpp has none).

Speed runs are fresh processes taking turns within each round (neon-f32, neon-q8, numpy, llama.cpp,
neon-f32, ...), so a noisy, shared machine slows all of them alike; each row shows its best run.

    python plugins/neon_kernels/bench/bench_decode.py [--model PATH] [--threads N] [--tokens 64]
        [--prompt-tokens 64] [--kl-tokens 256] [--rounds 3] [--max-context 512]
        [--engines neon-f32,neon-q8,numpy,llama-cpp] [--json]

llama-cpp-python is optional (``pip install llama-cpp-python``); without it that row is skipped
with a note. Its extra (repacking) buffer types are turned off (``use_extra_bufts = False``): their
AMX path crashed at the first decode on the machine this was written on.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: A fixed English text the prompt and the KL positions are cut from (the perplexity tests' sample).
TEXT = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "perplexity_sample.txt"
ENGINES = ("neon-f32", "neon-q8", "numpy", "llama-cpp")


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


def text_ids(model: str, n: int) -> list[int]:
    """The first ``n`` token ids of :data:`TEXT` (our tokenizer; every engine gets the same ids)."""
    from edgert_core.api import load_model

    m = load_model(model, backend="numpy", notify=None)
    try:
        ids = m.encode(TEXT.read_text(encoding="utf-8"))
    finally:
        m.close()
    if len(ids) < n:
        raise SystemExit(f"{TEXT} gives {len(ids)} tokens, fewer than the {n} asked for")
    return [int(i) for i in ids[:n]]


def edgert_model(engine: str, model: str, threads: int, ctx: int) -> Any:
    from edgert_core.api import load_model

    backend, _, mode = engine.partition("-")
    # governor "none": the kernels against llama.cpp's, without the adaptive runtime's monitor reads
    # (about 2 ms every 0.1 s on the VM this was written on: 1-2 % of the time; docs/monitors.md)
    return load_model(model, backend=backend, max_context=ctx, tune_process=True,  # as the CLI
                      threads=threads, activations=mode or None, notify=None, governor="none")


def run_edgert(engine: str, model: str, threads: int, prompt: list[int], tokens: int,
               ctx: int) -> dict[str, Any]:
    m = edgert_model(engine, model, threads, ctx)
    c_time = None
    if m.backend.name == "neon":
        from edgert_neon_kernels import kernels

        c_time = kernels.c_time
    times, c_seconds = [], []
    # Prepare the engine (read the weights into the pool) before the clock starts, as
    # llama_cpp.Llama() loads its model at construction: the prompt row is prompt processing only.
    _ = m.engine
    start = time.perf_counter()
    for _ in m.generate(prompt, max_tokens=tokens):
        times.append(time.perf_counter())
        if c_time is not None:
            c_seconds.append(c_time()[1])
    n = len(times) - 1
    res: dict[str, Any] = {
        "engine": engine,
        "path": f"{m.backend.status().path}, activations {m.activations}",
        "tokens": len(times),
        "prompt_tok_s": len(prompt) / (times[0] - start),
        "decode_tok_s": n / (times[-1] - times[0]),
    }
    if c_seconds:
        wall = (times[-1] - times[0]) / n
        res["python_ms_per_token"] = 1e3 * (wall - (c_seconds[-1] - c_seconds[0]) / n)
        res["c_ms_per_token"] = 1e3 * (c_seconds[-1] - c_seconds[0]) / n
    return res


def llama(model: str, threads: int, ctx: int, *, logits_all: bool = False) -> Any:
    llama_cpp = importlib.import_module("llama_cpp")
    lowlevel = importlib.import_module("llama_cpp.llama_cpp")
    default_params = lowlevel.llama_model_default_params

    def params_without_extra_bufts() -> Any:  # its AMX buffer types crash on some machines
        p = default_params()
        p.use_extra_bufts = False
        return p

    # Llama() reads llama_model_default_params from the low-level module at construction.
    setattr(lowlevel, "llama_model_default_params", params_without_extra_bufts)  # noqa: B010
    return llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=ctx,
                           n_batch=max(512, ctx), logits_all=logits_all, verbose=False)


def run_llama_cpp(model: str, threads: int, prompt: list[int], tokens: int,
                  ctx: int) -> dict[str, Any]:
    llm = llama(model, threads, ctx)
    times = []
    start = time.perf_counter()
    # Greedy (top_k=1), no stop on end-of-text or repeats so it decodes the requested count.
    for _ in llm.create_completion(prompt, max_tokens=tokens, temperature=0.0, top_k=1,
                                   repeat_penalty=1.0, stream=True):
        times.append(time.perf_counter())
    version = getattr(importlib.import_module("llama_cpp"), "__version__", "?")
    return {
        "engine": "llama-cpp",
        "path": f"llama-cpp-python {version}",
        "tokens": len(times),
        "prompt_tok_s": len(prompt) / (times[0] - start),
        "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]),
    }


def engine_logits(engine: str, model: str, threads: int, ids: list[int], ctx: int) -> np.ndarray:
    """float32 ``[len(ids), vocab]``: the engine's logits of every position of ``ids``."""
    if engine == "llama-cpp":
        llm = llama(model, threads, ctx, logits_all=True)
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    m = edgert_model(engine, model, threads, ctx)
    try:
        return np.asarray(m.logits(ids), dtype=np.float32)
    finally:
        m.close()


def mean_kl(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean ``KL(reference || engine)`` over the rows, with the perplexity command's math."""
    from edgert_core.perplexity import kl_divergence, log_softmax

    kl = [kl_divergence(log_softmax(ref_logits[i : i + 32]), log_softmax(logits[i : i + 32]))
          for i in range(0, len(ref_logits), 32)]
    return float(np.concatenate(kl).mean())


def child(args: argparse.Namespace, model: str) -> None:
    ids = json.loads(Path(args.ids).read_text())
    if args.task == "speed":
        prompt = ids[: args.prompt_tokens]
        if args.child == "llama-cpp":
            res = run_llama_cpp(model, args.threads, prompt, args.tokens, args.max_context)
        else:
            res = run_edgert(args.child, model, args.threads, prompt, args.tokens,
                             args.max_context)
        res["peak_rss_mb"] = peak_rss_bytes() / 2**20
    else:  # "logits": write them (numpy, the reference) or compare with the reference's
        logits = engine_logits(args.child, model, args.threads, ids[: args.kl_tokens],
                               args.max_context)
        ref_path = Path(args.ref)
        if args.child == "numpy":
            np.save(ref_path, logits)
            res = {"kl": 0.0}
        else:
            res = {"kl": mean_kl(np.load(ref_path), logits)}
    print(json.dumps(res))


def default_model() -> str:
    from edgert_core.pull import model_path

    return os.environ.get("EDGERT_SMOLLM2_GGUF") or str(model_path("smollm2"))


def run_child(engine: str, task: str, args: argparse.Namespace, model: str, ids: Path,
              ref: Path) -> dict[str, Any] | None:
    """One run of ``engine`` in a fresh interpreter (with this one's ``-S`` / ``-I`` flags)."""
    flags = ["-S"] if sys.flags.no_site else []
    flags += ["-I"] if sys.flags.isolated else []
    cmd = [sys.executable, *flags, __file__, "--child", engine, "--task", task, "--model", model,
           "--threads", str(args.threads), "--tokens", str(args.tokens),
           "--prompt-tokens", str(args.prompt_tokens), "--kl-tokens", str(args.kl_tokens),
           "--max-context", str(args.max_context), "--ids", str(ids), "--ref", str(ref)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{engine} {task} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}",
              file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def summarize(engines: list[str], runs: dict[str, list[dict[str, Any]]],
              kls: dict[str, float | None]) -> list[dict[str, Any]]:
    results = []
    for engine in engines:
        if not runs[engine]:
            continue
        best = dict(max(runs[engine], key=lambda r: r["decode_tok_s"]))
        best["prompt_tok_s"] = max(r["prompt_tok_s"] for r in runs[engine])
        best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs[engine])
        best["runs_tok_s"] = [round(r["decode_tok_s"], 1) for r in runs[engine]]
        best["kl"] = kls.get(engine)
        results.append(best)
    ref = next((r for r in results if r["engine"] == "llama-cpp"), None)
    for r in results:
        r["decode_vs_llama_cpp"] = r["decode_tok_s"] / ref["decode_tok_s"] if ref else None
        r["prompt_vs_llama_cpp"] = r["prompt_tok_s"] / ref["prompt_tok_s"] if ref else None
    return results


def print_table(results: list[dict[str, Any]], args: argparse.Namespace, model: str) -> None:
    print(f"{Path(model).name}: {args.threads} threads, context {args.max_context}, "
          f"{args.prompt_tokens}-token prompt, {args.tokens} greedy tokens, best of {args.rounds} "
          f"alternating rounds; KL vs numpy over {args.kl_tokens} positions of {TEXT.name}")
    head = (f"{'engine':10s} {'decode tok/s':>12s} {'vs llama':>8s} {'prompt tok/s':>12s} "
            f"{'vs llama':>8s} {'KL vs numpy':>11s} {'peak RSS MB':>11s} {'py ms/tok':>9s}  "
            f"path; decode runs")
    print(head)

    def ratio(v: float | None) -> str:
        return f"{v:.2f}x" if v is not None else "-"

    for r in results:
        kl = f"{r['kl']:.2e}" if r.get("kl") is not None else "-"
        py = f"{r['python_ms_per_token']:.2f}" if "python_ms_per_token" in r else "-"
        print(f"{r['engine']:10s} {r['decode_tok_s']:12.1f} {ratio(r['decode_vs_llama_cpp']):>8s} "
              f"{r['prompt_tok_s']:12.1f} {ratio(r['prompt_vs_llama_cpp']):>8s} {kl:>11s} "
              f"{r['peak_rss_mb']:11.1f} {py:>9s}  {r['path']}; {r['runs_tok_s']}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="GGUF file (default: the pulled smollm2)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--tokens", type=int, default=64, help="greedy tokens to generate")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="prompt length in tokens")
    ap.add_argument("--kl-tokens", type=int, default=256, help="text positions the KL is over")
    ap.add_argument("--max-context", type=int, default=512, help="our max_context, llama's n_ctx")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every engine once")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--no-kl", action="store_true", help="skip the KL column")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--task", default="speed", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--ref", help=argparse.SUPPRESS)
    args = ap.parse_args()
    model = args.model or default_model()
    if args.child:
        child(args, model)
        return
    engines = args.engines.split(",")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise SystemExit(f"unknown engines {unknown}; choose from {', '.join(ENGINES)}")
    if "llama-cpp" in engines and importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python is not installed (pip install llama-cpp-python): llama.cpp skipped",
              file=sys.stderr)
        engines.remove("llama-cpp")
    with tempfile.TemporaryDirectory(prefix="edgert-bench-") as tmp:
        ids_path, ref = Path(tmp) / "ids.json", Path(tmp) / "ref.npy"
        ids_path.write_text(json.dumps(text_ids(model, max(args.prompt_tokens, args.kl_tokens))))
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
        for _ in range(args.rounds):
            for engine in engines:  # alternate, so machine noise hits every engine alike
                res = run_child(engine, "speed", args, model, ids_path, ref)
                if res is not None:
                    runs[engine].append(res)
        kls: dict[str, float | None] = {}
        if not args.no_kl:
            # the reference first: it writes its logits for the others to compare with
            for engine in ["numpy", *[e for e in engines if e != "numpy"]]:
                res = run_child(engine, "logits", args, model, ids_path, ref)
                kls[engine] = None if res is None else float(res["kl"])
                if engine == "numpy" and res is None:
                    break
    results = summarize(engines, runs, kls)
    if args.json:
        print(json.dumps({"threads": args.threads, "tokens": args.tokens,
                          "prompt_tokens": args.prompt_tokens, "kl_tokens": args.kl_tokens,
                          "max_context": args.max_context, "rounds": args.rounds,
                          "results": results}, indent=1))
        return
    print_table(results, args, model)


if __name__ == "__main__":
    main()
