"""Kernel micro-benchmark: the C matrix-vector product on GGUF blocks against numpy, in one process,
on SmolLM2-135M's matrix shapes (random blocks, so no model file is needed).

Compared per shape (microseconds per call, T=1 unless --tokens):
  numpy dequant+matmul   dequantize the blocks to fp32 then x @ W.T (what keeping weights
                         quantized costs with numpy only)
  numpy fp32 matmul      x @ W.T on weights already held as fp32 (the numpy backend; 6-8x memory)
  neon q8 / neon f32     this package, int8 or fp32 activations, --threads threads

    python plugins/neon_kernels/bench/bench_kernels.py [--threads N] [--tokens T] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
from edgert_neon_kernels import kernels

from edgert_core.backends.numpy_ref import dequantize
from edgert_core.plugin_api import usable_cpus

# (name, dtype, rows, cols) of SmolLM2-135M Q4_1: per layer, then the tied Q8_0 output projection
SHAPES = [
    ("q/o_proj", "Q4_1", 576, 576),
    ("k/v_proj", "Q4_1", 192, 576),
    ("gate/up_proj", "Q4_1", 1536, 576),
    ("down_proj", "Q4_1", 576, 1536),
    ("lm_head", "Q8_0", 49152, 576),
]
BLOCK = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


def per_call(fn: Callable[[], object], min_seconds: float = 0.2) -> float:
    """Best of 5 rounds of mean seconds per call."""
    fn()
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t > min_seconds / 5:
            break
        n *= 2
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def random_blocks(dtype: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    blocks = rng.integers(0, 256, size=(rows * cols // 32, BLOCK[dtype]), dtype=np.uint8)
    n_scales = 2 if dtype == "Q4_1" else 1
    scales = rng.uniform(-0.05, 0.05, size=(blocks.shape[0], n_scales)).astype(np.float16)
    blocks[:, : 2 * n_scales] = scales.view(np.uint8)
    return blocks.reshape(rows, -1)


def measure(name: str, dtype: str, n: int, k: int, tokens: int, threads: int,
            rng: np.random.Generator) -> dict[str, float | str | int]:
    """Microseconds per call of each way to compute ``x [tokens, k] @ W[n, k].T``."""
    blocks = random_blocks(dtype, n, k, rng)
    flat = blocks.reshape(-1)
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    w32 = dequantize(dtype, flat, (n, k))
    return {
        "shape": name, "dtype": dtype, "rows": n, "cols": k,
        "numpy_dequant_matmul_us": per_call(lambda: x @ dequantize(dtype, flat, (n, k)).T) * 1e6,
        "numpy_fp32_matmul_us": per_call(lambda: x @ w32.T) * 1e6,
        "neon_q8_1t_us": per_call(lambda: kernels.linear(x, blocks, dtype, threads=1)) * 1e6,
        "neon_q8_us": per_call(lambda: kernels.linear(x, blocks, dtype, threads=threads)) * 1e6,
        "neon_f32_us": per_call(
            lambda: kernels.linear(x, blocks, dtype, threads=threads, act_q8=False)
        ) * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=usable_cpus())
    ap.add_argument("--tokens", type=int, default=1, help="rows of activations (1 = decode)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows_out = [measure(*shape, args.tokens, args.threads, rng) for shape in SHAPES]
    info = {"path": kernels.active_path(), "threads": args.threads, "tokens": args.tokens}
    if args.json:
        print(json.dumps({**info, "results": rows_out}, indent=1))
        return
    print(f"path {info['path']}, threads {args.threads}, T={args.tokens}; microseconds per call")
    print(f"{'shape':13s} {'dtype':5s} {'deq+mm':>9s} {'fp32 mm':>9s} {'q8 1t':>8s} {'q8':>8s} "
          f"{'f32':>8s}  {'vs deq+mm':>9s} {'vs fp32':>8s}")
    for r in rows_out:
        deq, f32mm, q8 = (float(r[key]) for key in
                          ("numpy_dequant_matmul_us", "numpy_fp32_matmul_us", "neon_q8_us"))
        print(f"{r['shape']:13s} {r['dtype']:5s} {deq:9.1f} {f32mm:9.1f} {float(r['neon_q8_1t_us']):8.1f} "
              f"{q8:8.1f} {float(r['neon_f32_us']):8.1f}  {deq / q8:8.1f}x {f32mm / q8:7.1f}x")


if __name__ == "__main__":
    main()
