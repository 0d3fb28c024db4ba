"""``edge-rt serve`` as a process, on a free loopback port, with SmolLM2 under a memory budget: a
full queue (503 + Retry-After), the process's OS-measured RSS staying within the budget over its
idle RSS while the queue is full, clients that disconnect having their generations cancelled, and
SIGTERM and Ctrl-C (SIGINT): stop accepting, cancel what runs, exit 0. Every wait is bounded."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from edgert_core.testing import smollm2_for_tests

MIB = 1024 * 1024
BUDGET_MIB = 64
WAIT = 60.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")


class ServeProcess:
    """``edge-rt serve`` in a subprocess; :attr:`url` once it says where it listens."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edgert_core", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        self._url: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(WAIT) or not self._url:
            self.proc.kill()
            raise AssertionError("the server did not start:\n" + "".join(self.stderr))
        self.url = self._url[0]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            found = re.search(r" at (http://127\.0\.0\.1:\d+)/v1 ", line)
            if found:
                self._url.append(found.group(1))
                self._ready.set()
        self._ready.set()

    def status_kib(self, field: str) -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        found = re.search(rf"^{field}:\s+(\d+) kB", text, flags=re.M)
        assert found, text
        return int(found.group(1))

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=WAIT).text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}

    def wait_metric(self, name: str, value: float) -> dict[str, float]:
        deadline = time.monotonic() + WAIT
        while True:
            m = self.metrics()
            if m.get(name) == value:
                return m
            assert time.monotonic() < deadline, f"{name} stayed {m.get(name)}, not {value}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)


class RSSSampler:
    """The server's VmRSS, read from /proc every few milliseconds until stopped; :attr:`peak`."""

    def __init__(self, server: ServeProcess) -> None:
        self.server = server
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.server.status_kib("VmRSS") * 1024)
            self.samples += 1

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)


@pytest.fixture()
def budgeted() -> Iterator[ServeProcess]:
    s = ServeProcess("--model", str(smollm2_for_tests()), "--model-id", "smollm2",
                     "--memory-budget", f"{BUDGET_MIB}M", "--max-queue", "2", "--max-context", "512")
    yield s
    s.stop()


@pytest.fixture()
def resident() -> Iterator[ServeProcess]:
    s = ServeProcess("--model", str(smollm2_for_tests()), "--model-id", "smollm2", "--max-context", "512",
                     "--shutdown-timeout", "2")
    yield s
    s.stop()


def _open_stream(stack: ExitStack, client: httpx.Client, url: str, max_tokens: int) -> Iterator[str]:
    response = stack.enter_context(client.stream("POST", url + "/v1/completions", json={
        "model": "smollm2", "prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True}))
    assert response.status_code == 200
    return response.iter_lines()


def _next_text(lines: Iterator[str]) -> str:
    for line in lines:
        if line.startswith("data: {"):
            return str(json.loads(line[6:])["choices"][0]["text"])
    raise AssertionError("the stream ended")


def _give_up_waiting(url: str) -> None:
    try:
        httpx.post(url + "/v1/completions", timeout=2.0,
                   json={"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 400})
    except httpx.TimeoutException:
        return
    raise AssertionError("the request was answered although the engine was busy")


class Reader:
    """A streamed completion read as it comes, in a thread, until :meth:`hang_up`; then the
    client closes the connection. :attr:`received` counts the text events read."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.received = 0
        self.first = threading.Event()
        self._hang_up = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.first.wait(WAIT), "no first token"

    def _run(self) -> None:
        with httpx.Client(timeout=WAIT) as client, ExitStack() as stack:
            for line in _open_stream(stack, client, self.url, 400):
                if line.startswith("data: {"):
                    self.received += 1
                    self.first.set()
                if self._hang_up.is_set():
                    return

    def hang_up(self) -> int:
        self._hang_up.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive()
        return self.received


def test_full_queue_503_rss_within_budget_and_disconnects_cancel(budgeted: ServeProcess) -> None:
    server = budgeted
    idle = server.status_kib("VmRSS") * 1024
    with ExitStack() as stack, RSSSampler(server) as rss:
        running = Reader(server.url)
        client = stack.enter_context(httpx.Client(timeout=WAIT))
        waiting = _open_stream(stack, client, server.url, 400)
        impatient = threading.Thread(target=_give_up_waiting, args=(server.url,), daemon=True)
        impatient.start()  # a request without stream that gives up while it waits
        server.wait_metric("edgert_queue_depth", 2)
        refused = httpx.post(server.url + "/v1/completions", timeout=WAIT,
                             json={"model": "smollm2", "prompt": "hi", "max_tokens": 2})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["Retry-After"]) >= 1
        impatient.join(WAIT)
        server.wait_metric('edgert_generations_total{reason="cancelled"}', 1)  # out of the queue
        assert server.metrics()["edgert_queue_depth"] == 1
        assert waiting is not None
        stack.close()  # the waiting stream's client disconnects
        server.wait_metric("edgert_queue_depth", 0)
        n_received = running.hang_up()  # and the running one's
    m = server.wait_metric('edgert_generations_total{reason="cancelled"}', 3)
    assert m["edgert_queue_depth"] == 0 and m["edgert_requests_running"] == 0
    generated = m["edgert_generated_tokens_total"]
    assert n_received <= generated <= n_received + 3, (n_received, generated)  # not the 400 asked
    assert rss.samples > 20
    baseline = m["edgert_engine_baseline_resident_memory_bytes"]
    assert 0 < baseline <= idle and m["edgert_memory_budget_bytes"] == BUDGET_MIB * MIB
    over = rss.peak - baseline
    print(f"engine baseline RSS {baseline / MIB:.1f} MiB, idle {idle / MIB:.1f} MiB, peak "
          f"{rss.peak / MIB:.1f} MiB in {rss.samples} samples with the queue full: {over / MIB:.1f} "
          f"MiB over the baseline (budget {BUDGET_MIB} MiB); tokens generated {generated:.0f}, "
          f"received {n_received}")
    assert over <= BUDGET_MIB * MIB, f"{over / MIB:.1f} MiB over the baseline {baseline / MIB:.1f} MiB"
    # the server still answers after all that
    r = httpx.post(server.url + "/v1/completions", timeout=WAIT,
                   json={"model": "smollm2", "prompt": "The ship entered the port of", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_accepting_cancels_in_flight_and_exits_0(resident: ServeProcess,
                                                              sig: signal.Signals) -> None:
    server = resident
    with httpx.Client(timeout=WAIT) as client, ExitStack() as stack:
        lines = _open_stream(stack, client, server.url, 400)
        _next_text(lines)
        os.kill(server.proc.pid, sig)
        deadline = time.monotonic() + WAIT
        while True:  # new connections are refused soon after the signal
            try:
                httpx.get(server.url + "/health", timeout=1)
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, "the server kept accepting connections"
            time.sleep(0.05)
        try:  # the stream in flight ends: cut after --shutdown-timeout, or finished
            for _ in lines:
                pass
        except httpx.TransportError:
            pass
    assert server.proc.wait(WAIT) == 0, "".join(server.stderr)
    assert any("stopped;" in line for line in server.stderr), "".join(server.stderr)
