"""Benchmark of a pipeline across Dask workers (issue 16): decode tok/s and the hop time per worker
for one process and for 1, 2 and 3 local workers (``--cluster local:N``), each run a fresh
``edge-rt run --json`` process, the configurations alternating round by round (this machine is
shared and noisy: compare within a round). Then, on paper, a 4-Pi pipeline on an 8B Q4 model from
the measured hop and the per-layer cost, against distributed-llama's published figures.

    python scripts/bench_cluster.py [--model smollm2] [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

EDGE_RT = str(Path(sys.executable).parent / "edge-rt")
PROMPT = "Explain why the sky is blue in one paragraph."

#: distributed-llama's published Llama-2-7B Q40 figures on Raspberry Pi 4 (ms per token)
DLLAMA_ONE_PI_MS = 1312.0
DLLAMA_FOUR_PI_MS = 494.0
#: Llama-3-8B: 32 layers, about 4.7 GB at 4 bits, hidden 4096, vocabulary 128256
BIG_LAYERS = 32
BIG_BYTES = 4.7e9
BIG_HIDDEN = 4096
BIG_VOCAB = 128256
#: a Raspberry Pi 4's Ethernet: 1 Gbit/s
LAN_BYTES_PER_S = 125e6
PIS = 4
#: Llama-2-7B Q40 file size, for the bandwidth distributed-llama's one-Pi figure implies
DLLAMA_7B_BYTES = 3.9e9


def run(model: str, tokens: int, cluster: str | None) -> dict[str, Any]:
    cmd = [EDGE_RT, "run", "--model", model, "--chat", "-p", PROMPT, "-n", str(tokens), "--json",
           "--governor", "none"]
    if cluster is not None:
        cmd += ["--cluster", cluster]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
    report: dict[str, Any] = json.loads(out[out.index("\n{") + 1:] if not out.startswith("{")
                                        else out)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    configs: list[str | None] = [None, "local:1", "local:2", "local:3"]
    rows: dict[str | None, list[dict[str, Any]]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in configs:
            rows[c].append(run(args.model, args.tokens, c))
            print(f"round {r + 1}: {c or 'one process'}: "
                  f"{rows[c][-1]['decode_tokens_per_s']:.1f} tok/s", file=sys.stderr)
    base = statistics.median(x["decode_tokens_per_s"] for x in rows[None])
    print(f"| run | decode tok/s (median of {args.rounds}) | vs one process | hop ms per worker "
          "(median) | ids equal to one process |")
    print("|---|---|---|---|---|")
    ref_ids = rows[None][0]["generated_ids"]
    hop_all: list[float] = []
    for c in configs:
        tps = statistics.median(x["decode_tokens_per_s"] for x in rows[c])
        hops = "-"
        if c is not None:
            per = [[w["hop_ms"] for w in x["workers"]] for x in rows[c]]
            med = [statistics.median(h[i] for h in per) for i in range(len(per[0]))]
            hop_all += med
            hops = ", ".join(f"{h:.1f}" for h in med)
        same = all(x["generated_ids"] == ref_ids for x in rows[c])
        print(f"| {c or 'one process'} | {tps:.1f} | {tps / base:.2f}x | {hops} | {same} |")
    one = rows[None][0]
    layers = sum(len(g) for g in one["groups"])  # one process: each group lists its layers
    ms_token = 1000 / base
    hop = statistics.median(hop_all)
    print()
    print(f"measured here: {ms_token:.2f} ms/token in one process over {layers} layers; "
          f"median hop {hop:.1f} ms (Dask actor call on loopback, activations there and back)")
    pi_bytes_per_s = DLLAMA_7B_BYTES / (DLLAMA_ONE_PI_MS / 1000)
    compute = BIG_BYTES / pi_bytes_per_s * 1000
    # per token: the activations go down the chain (PIS hops, the first from the client) and the
    # last position's logits come back up through every stage
    wire = PIS * (BIG_HIDDEN * 4 + BIG_VOCAB * 4) / LAN_BYTES_PER_S * 1000
    total = compute + PIS * hop + wire
    print(f"{PIS}-Pi pipeline, 8B Q4 ({BIG_BYTES / 1e9:.1f} GB, {BIG_LAYERS} layers), one "
          f"sequence: the stages run one after another, so the compute is still one device's "
          f"reading every weight once: {compute:.0f} ms at the {pi_bytes_per_s / 1e9:.1f} GB/s "
          f"that distributed-llama's one-Pi figure implies; plus {PIS} hops of {hop:.1f} ms "
          f"(the Dask call overhead measured here) and {wire:.0f} ms on a 1 Gbit/s LAN for the "
          f"activations down and the {BIG_VOCAB * 4 / 1e3:.0f} kB of logits back up the chain: "
          f"about {total:.0f} ms/token. distributed-llama: {DLLAMA_FOUR_PI_MS:.0f} ms on four "
          f"Pis (tensor parallel: each Pi reads a quarter of every layer), "
          f"{DLLAMA_ONE_PI_MS:.0f} ms on one (7B); ours would be {total / DLLAMA_FOUR_PI_MS:.1f}x "
          "theirs, the price of fitting the model without splitting every matrix.")


if __name__ == "__main__":
    main()
