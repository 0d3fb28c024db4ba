"""Figures for ``edge-rt serve``: an ``openai`` client session, a bounded load test, ``/metrics``.

Starts ``edge-rt serve`` in a subprocess on a free loopback port (127.0.0.1 only), then

1. a short session with the official ``openai`` client (models, a chat, a streamed chat, a
   completion), printed as a transcript;
2. the load test: ``--clients`` threads each send ``--requests`` streamed greedy chat requests at
   once (each client its own question); every answer is checked against the same question asked
   alone, and the client-side latency and time to first token (first content chunk) are reported
   with their p50/p95, with the server's peak RSS read from ``/proc/PID/status`` while it runs;
3. ``/metrics`` after it (trimmed: no ``_created`` series, no empty histogram buckets);
4. SIGTERM, and the server's exit status.

Every request has a timeout and the whole run a deadline. Linux only (it reads /proc).

Usage: ``python scripts/serve_load.py [--model smollm2] [--clients 8] [--requests 5]
[--max-tokens 24] [--memory-budget 128M]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "What is 12 times 12?",
    "Write one sentence about the sea.",
    "What do bees make?",
    "Which planet is closest to the sun?",
    "Give me a word that rhymes with cat.",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What colour is the sky on a clear day?",
)
TIMEOUT = 300.0  # seconds for one request
DEADLINE = 1800.0  # seconds for the whole run


class Server:
    """``edge-rt serve`` in a subprocess, on a free loopback port."""

    def __init__(self, args: list[str]) -> None:
        cmd = [sys.executable, "-m", "edgert_core", "serve", "--host", "127.0.0.1", "--port", "0",
               "--model-id", "smollm2", *args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        found = threading.Event()
        self.url = ""

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line.rstrip("\n"))
                m = re.search(r" at (http://127\.0\.0\.1:\d+)/v1 ", line)
                if m:
                    self.url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(120) or not self.url:
            self.proc.kill()
            raise SystemExit("the server did not start:\n" + "\n".join(self.log))

    def rss_kib(self, field: str = "VmRSS") -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        m = re.search(rf"^{field}:\s+(\d+) kB", text, flags=re.M)
        return int(m.group(1)) if m else 0


def transcript(client: openai.OpenAI) -> None:
    print("== openai client session")
    print(">>> [m.id for m in client.models.list().data]")
    print([m.id for m in client.models.list().data])
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    print(f">>> client.chat.completions.create(model='smollm2', messages={messages}, temperature=0)")
    reply = client.chat.completions.create(model="smollm2", messages=messages, temperature=0)
    print(f"choices[0].message.content = {reply.choices[0].message.content!r}")
    print(f"choices[0].finish_reason = {reply.choices[0].finish_reason!r}; usage = {reply.usage}")
    messages += [{"role": "assistant", "content": reply.choices[0].message.content or ""},
                 {"role": "user", "content": "And of Italy?"}]
    print(">>> for chunk in client.chat.completions.create(..., messages=<3 messages>, stream=True):")
    pieces = []
    for chunk in client.chat.completions.create(model="smollm2", messages=messages, temperature=0,
                                                stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        elif chunk.choices and chunk.choices[0].finish_reason:
            print(f"   chunks: {pieces}\n   finish_reason: {chunk.choices[0].finish_reason!r}")
    print(">>> client.completions.create(model='smollm2', prompt='The ship entered the port of', "
          "max_tokens=12, temperature=0)")
    done = client.completions.create(model="smollm2", prompt="The ship entered the port of", max_tokens=12,
                                     temperature=0)
    print(f"choices[0].text = {done.choices[0].text!r}; finish_reason = {done.choices[0].finish_reason!r}")
    print(">>> client.chat.completions.create(model='gpt-4o', ...)")
    try:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    except openai.NotFoundError as exc:
        print(f"openai.NotFoundError {exc.status_code}: {json.dumps(exc.body)}")
    print(">>> client.chat.completions.create(model='smollm2', n=2, ...)")
    try:
        client.chat.completions.create(model="smollm2", n=2, messages=[{"role": "user", "content": "hi"}])
    except openai.BadRequestError as exc:
        print(f"openai.BadRequestError {exc.status_code}: {json.dumps(exc.body)}")


def ask(client: openai.OpenAI, question: str, max_tokens: int) -> tuple[str, float, float | None, int]:
    """One streamed greedy chat request: (text, latency s, time to first content s, tokens)."""
    t0 = time.perf_counter()
    first: float | None = None
    pieces = []
    tokens = 0
    for chunk in client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": question}], temperature=0,
            max_tokens=max_tokens, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first if first is not None else time.perf_counter() - t0
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return "".join(pieces), time.perf_counter() - t0, first, tokens


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(server: Server, client: openai.OpenAI, clients: int, requests: int, max_tokens: int) -> None:
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(clients)]
    alone = {q: ask(client, q, max_tokens)[0] for q in dict.fromkeys(questions)}
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], server.rss_kib() * 1024)

    sampler = threading.Thread(target=sample, daemon=True)
    idle = server.rss_kib() * 1024
    sampler.start()

    def one_client(i: int) -> list[tuple[str, float, float | None, int]]:
        return [ask(client, questions[i], max_tokens) for _ in range(requests)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one_client, i) for i in range(clients)]
        results = [f.result(timeout=DEADLINE) for f in futures]
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join(5)
    answers = [(questions[i], r) for i, rs in enumerate(results) for r in rs]
    wrong = sum(1 for q, r in answers if r[0] != alone[q])
    latencies = [r[1] for _, r in answers]
    ttfts = [r[2] for _, r in answers if r[2] is not None]
    tokens = sum(r[3] for _, r in answers)
    print(f"\n== load: {clients} clients x {requests} streamed greedy chat requests, max_tokens {max_tokens}")
    print(f"requests: {len(answers)} answered of {clients * requests}; {wrong} differ from the same "
          f"question asked alone; wall {wall:.1f} s; {tokens} tokens ({tokens / wall:.1f} tok/s)")
    print(f"latency: p50 {pct(latencies, 0.5):.2f} s, p95 {pct(latencies, 0.95):.2f} s, "
          f"max {max(latencies):.2f} s")
    print(f"time to first token: p50 {pct(ttfts, 0.5):.2f} s, p95 {pct(ttfts, 0.95):.2f} s, "
          f"min {min(ttfts):.2f} s (queue wait included)")
    print(f"server RSS (OS, /proc): idle {idle / 2**20:.1f} MiB, peak {peak[0] / 2**20:.1f} MiB "
          f"sampled during the load, VmHWM {server.rss_kib('VmHWM') / 1024:.1f} MiB; "
          f"mean latency {statistics.mean(latencies):.2f} s")


def trimmed_metrics(url: str) -> str:
    keep = []
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("#") or "_created" in line:
            continue
        if "_bucket{" in line and line.endswith(" 0.0"):
            continue
        if line.startswith(("edgert_", "process_resident")):
            keep.append(line)
    return "\n".join(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--memory-budget", default=None)
    parser.add_argument("--max-context", type=int, default=512)
    a = parser.parse_args()
    extra = ["--model", a.model, "--max-context", str(a.max_context), "--max-queue", str(a.clients)]
    if a.memory_budget:
        extra += ["--memory-budget", a.memory_budget]
    server = Server(extra)

    def give_up() -> None:
        print(f"deadline of {DEADLINE:.0f} s reached: stopping", flush=True)
        server.proc.kill()
        os._exit(1)

    timer = threading.Timer(DEADLINE, give_up)
    timer.daemon = True
    timer.start()
    try:
        print("\n".join(server.log))
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=TIMEOUT, max_retries=0)
        transcript(client)
        load(server, client, a.clients, a.requests, a.max_tokens)
        print("\n== /metrics after the load (trimmed: no _created series, no empty buckets)")
        print(trimmed_metrics(server.url))
    finally:
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(60)
        print(f"\n== SIGTERM: the server exited with status {code}")
        print("\n".join(line for line in server.log[-2:]))


if __name__ == "__main__":
    main()
