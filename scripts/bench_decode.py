"""Decode speed of SmolLM2-135M on the numpy backend, and transformers fp32 on the same GGUF.

Both decode the same greedy continuation of the same prompt, one token per step with a KV cache;
only the decode steps are timed (the prompt's prefill is not). The two are measured in alternating
rounds so that a busy machine slows both alike, and the medians are compared.

Run: ``python scripts/bench_decode.py [--tokens 64] [--rounds 3] [--model PATH]``. transformers
(with torch and accelerate, for GGUF loading) is optional; without it only edge-rt is measured.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from pathlib import Path
from typing import Any

from edgert_core.api import Model, load_model
from edgert_core.generate import generate_ids
from edgert_core.pull import pull

PROMPT = "The ship entered the port of"


def edgert_round(model: Model, prompt_ids: list[int], tokens: int) -> float:
    """Decode tokens per second of one greedy generation (no stop ids: exactly ``tokens``)."""
    from edgert_core.generate import GenerationStats

    model.engine.cached_ids.clear()
    stats = GenerationStats()
    for _ in generate_ids(model.engine, prompt_ids, max_tokens=tokens + 1, stats=stats):
        pass
    assert stats.decode_tokens_per_s is not None
    return stats.decode_tokens_per_s


class Transformers:
    """transformers fp32 on the GGUF (dequantized on load), torch with ``threads`` threads."""

    def __init__(self, path: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model: Any = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        self.model.train(False)

    def round(self, prompt_ids: list[int], tokens: int) -> float:
        torch = self.torch
        # transformers 5 names the KV cache ``cache``; 4.x named it ``past_key_values``
        key = "cache" if "cache" in inspect.signature(self.model.forward).parameters else (
            "past_key_values")
        with torch.inference_mode():
            out = self.model(torch.tensor([prompt_ids]), use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(tokens):
                out = self.model(token, use_cache=True, **{key: getattr(out, key)})
                token = out.logits[:, -1:].argmax(-1)
            return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: pulled smollm2)")
    parser.add_argument("--tokens", type=int, default=64, help="decode steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for transformers")
    parser.add_argument("--no-transformers", action="store_true", help="measure edge-rt only")
    args = parser.parse_args()

    path = args.model or pull("smollm2")
    model = load_model(path, backend="numpy", max_context=args.tokens + 64, tune_process=True)  # as the CLI
    assert model.tokenizer is not None
    prompt_ids = model.tokenizer.encode(PROMPT)
    edgert_round(model, prompt_ids, 4)  # warm up: loads and prepares every weight

    reference: Transformers | None = None
    if not args.no_transformers:
        try:
            reference = Transformers(path, args.threads)
            reference.round(prompt_ids, 4)
        except ImportError as exc:
            print(f"transformers not measured: {exc}")

    ours: list[float] = []
    theirs: list[float] = []
    for r in range(args.rounds):
        ours.append(edgert_round(model, prompt_ids, args.tokens))
        line = f"round {r + 1}: edge-rt numpy {ours[-1]:6.1f} tok/s"
        if reference is not None:
            theirs.append(reference.round(prompt_ids, args.tokens))
            line += f"   transformers fp32 ({args.threads} threads) {theirs[-1]:6.1f} tok/s"
        print(line, flush=True)

    mine = statistics.median(ours)
    print(f"edge-rt numpy backend: {mine:.1f} decode tok/s (median of {args.rounds})")
    if theirs:
        ref = statistics.median(theirs)
        print(f"transformers fp32:     {ref:.1f} decode tok/s (median of {args.rounds})")
        print(f"ratio edge-rt / transformers: {mine / ref:.2f}x")


if __name__ == "__main__":
    main()
