"""``edge-rt serve``'s app with real clients: the official ``openai`` package (sync, async,
streaming) and raw ``httpx`` requests, against uvicorn on a free loopback port in a thread.

SmolLM2 answers the exact-answer tests (a greedy request must give what ``edge-rt run --chat``
prints); the tiny Llama fixture (hundreds of tokens a second) carries the load test and the
tests where only speed matters. The server as a process (signals, RSS, queue-full, disconnects)
is in tests/test_serve_process.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

import edgert_core
from edgert_core.api import Generation, Model, load_model
from edgert_core.serve.app import create_app
from edgert_core.serve.errors import APIError
from edgert_core.serve.protocol import GenerationRequest
from edgert_core.serve.server import bind, exposure_warning, is_loopback, url_of
from edgert_core.serve.worker import Delta, EngineWorker, Finished, Job, StopMatcher
from edgert_core.testing import smollm2_for_tests

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures" / "tiny_llama"
EDGE_RT = [sys.executable, "-m", "edgert_core"]
QUESTION = "What is the capital of France?"
SECOND = "And of Italy?"
COMPLETION_PROMPT = "The ship entered the port of"
CHAT_TOKENS = 24
WAIT = 30.0  # seconds: the bound of every wait in this file


class ThreadServer:
    """uvicorn serving ``app`` on a free loopback port, in a daemon thread (stopped on exit)."""

    def __init__(self, app: Any) -> None:
        self.sock = bind("127.0.0.1", 0)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            assert self.thread.is_alive(), "the server thread died"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the server did not stop"
        self.sock.close()


def run_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*EDGE_RT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)


def output(proc: subprocess.Popen[str], stdin: str | None = None) -> str:
    out, err = proc.communicate(stdin, timeout=120)
    assert proc.returncode == 0, err
    return out


@pytest.fixture(scope="module")
def smol_path() -> Path:
    return smollm2_for_tests()


@pytest.fixture(scope="module")
def cli_answers(smol_path: Path) -> dict[str, str]:
    """What the CLI prints, greedy, for the prompts the tests send (run at once, in fresh processes)."""
    m = str(smol_path)
    n = str(CHAT_TOKENS)
    procs = {
        "chat": run_cli("run", "-m", m, "--chat", "--prompt", QUESTION, "--temperature", "0", "-n", n),
        "completion": run_cli("run", "-m", m, "--prompt", COMPLETION_PROMPT, "-n", "12"),
        "two_turns": run_cli("chat", "-m", m, "-n", n),
    }
    return {
        "chat": output(procs["chat"]).removesuffix("\n"),
        "completion": output(procs["completion"]).removesuffix("\n"),
        "two_turns": output(procs["two_turns"], f"{QUESTION}\n{SECOND}\n"),
    }


@pytest.fixture(scope="module")
def smol(smol_path: Path) -> Iterator[ThreadServer]:
    model = load_model(smol_path, notify=None)
    with ThreadServer(create_app(model, aliases=("smollm2",))) as server:
        yield server
    model.close()


@pytest.fixture(scope="module")
def tiny() -> Iterator[ThreadServer]:
    model = load_model(TINY, notify=None)
    with ThreadServer(create_app(model, model_id="tiny", max_queue=16,
                                 max_body_bytes=64 * 1024)) as server:
        yield server
    model.close()


def client(server: ThreadServer, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=kw.pop("api_key", "unused"),
                         timeout=WAIT, max_retries=0, **kw)


# -- the exact answers, with the openai client ---------------------------------------------------


def test_greedy_chat_is_what_run_chat_prints(smol: ThreadServer, cli_answers: dict[str, str]) -> None:
    reply = client(smol).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": QUESTION}], temperature=0,
        max_tokens=CHAT_TOKENS)
    assert reply.choices[0].message.content == cli_answers["chat"]
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.object == "chat.completion"
    assert reply.model == reply.model and reply.model.startswith("SmolLM2")
    assert reply.usage is not None and reply.usage.prompt_tokens > 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_second_turn_with_history_is_what_chat_prints(smol: ThreadServer,
                                                      cli_answers: dict[str, str]) -> None:
    first, second = cli_answers["two_turns"].split("\n")[:2]
    assert first == cli_answers["chat"]
    reply = client(smol).chat.completions.create(
        model="smollm2", temperature=0, max_completion_tokens=CHAT_TOKENS,
        messages=[{"role": "user", "content": QUESTION}, {"role": "assistant", "content": first},
                  {"role": "user", "content": [{"type": "text", "text": SECOND}]}])
    assert reply.choices[0].message.content == second


def test_completion_is_what_run_prints(smol: ThreadServer, cli_answers: dict[str, str]) -> None:
    reply = client(smol).completions.create(model="smollm2", prompt=COMPLETION_PROMPT, max_tokens=12,
                                            temperature=0)
    assert reply.choices[0].text == cli_answers["completion"]
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 12


def test_streaming_gives_the_same_text_in_chunks(smol: ThreadServer,
                                                 cli_answers: dict[str, str]) -> None:
    stream = client(smol).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": QUESTION}], temperature=0,
        max_tokens=CHAT_TOKENS, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == cli_answers["chat"]
    assert sum(1 for p in pieces if p) >= 3  # token by token, not one block
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= sum(1 for p in pieces if p)


def test_streamed_completion_and_raw_sse_end_with_done(smol: ThreadServer,
                                                       cli_answers: dict[str, str]) -> None:
    with httpx.stream("POST", smol.url + "/v1/completions", timeout=WAIT, json={
            "model": "smollm2", "prompt": COMPLETION_PROMPT, "max_tokens": 12, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(e["choices"][0]["text"] for e in events) == cli_answers["completion"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_async_client_answers_concurrent_requests(smol: ThreadServer,
                                                  cli_answers: dict[str, str]) -> None:
    async def main() -> list[str | None]:
        async with openai.AsyncOpenAI(base_url=smol.url + "/v1", api_key="unused", timeout=WAIT,
                                      max_retries=0) as aclient:
            replies = await asyncio.gather(*(aclient.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": QUESTION}], temperature=0,
                max_tokens=CHAT_TOKENS) for _ in range(3)))
            models = await aclient.models.list()
            assert [m.id for m in models.data] == [replies[0].model]
            return [r.choices[0].message.content for r in replies]

    assert asyncio.run(main()) == [cli_answers["chat"]] * 3


def test_stop_sequence_cuts_the_answer(smol: ThreadServer, cli_answers: dict[str, str]) -> None:
    answer = cli_answers["chat"]
    words = answer.split(" ")
    assert len(words) >= 4, answer
    stop = " " + words[3][:3]  # a stop string that the tokens may split
    reply = client(smol).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": QUESTION}], temperature=0,
        max_tokens=CHAT_TOKENS, stop=[stop, "never-in-the-answer"])
    assert reply.choices[0].message.content == answer[: answer.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_temperature_changes_it(tiny: ThreadServer) -> None:
    c = client(tiny)

    def sample(seed: int) -> str | None:
        return c.completions.create(model="tiny", prompt="hello", max_tokens=24, temperature=1.5,
                                    top_p=0.95, seed=seed).choices[0].text

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_prompt_longer_than_the_context_is_a_400_with_the_figures(smol: ThreadServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(smol).chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "word " * 700}])
    err = info.value.body
    assert isinstance(err, dict)
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    figures = [int(n) for n in re.findall(r"\d+", err["message"])]
    assert 512 in figures and any(n > 700 for n in figures), err["message"]


def test_unknown_model_is_404_model_not_found(smol: ThreadServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(smol).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "model_not_found"
    assert "SmolLM2" in info.value.body["message"]


# -- malformed requests, raw ---------------------------------------------------------------------

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
BAD_REQUESTS: list[tuple[str, str, Any, int, str | None, str | None]] = [
    # (name, path, body: a dict to send as JSON or bytes as they are, status, param, code)
    ("invalid json", "/v1/chat/completions", b"{not json", 400, None, "invalid_json"),
    ("not utf-8", "/v1/chat/completions", b"\xff\xfe{}", 400, None, "invalid_json"),
    ("body not an object", "/v1/chat/completions", [1, 2], 400, None, "invalid_type"),
    ("missing model", "/v1/chat/completions", {"messages": CHAT["messages"]}, 400, "model",
     "missing_required_parameter"),
    ("missing messages", "/v1/chat/completions", {"model": "tiny"}, 400, "messages",
     "missing_required_parameter"),
    ("missing prompt", "/v1/completions", {"model": "tiny"}, 400, "prompt", "missing_required_parameter"),
    ("messages not an array", "/v1/chat/completions", {**CHAT, "messages": "hi"}, 400, "messages",
     "invalid_type"),
    ("message without role", "/v1/chat/completions", {**CHAT, "messages": [{"content": "hi"}]}, 400,
     "messages[0].role", "missing_required_parameter"),
    ("content a number", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": 3}]},
     400, "messages[0].content", "invalid_type"),
    ("last message not user", "/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     400, "messages", "invalid_value"),
    ("temperature a string", "/v1/chat/completions", {**CHAT, "temperature": "hot"}, 400,
     "temperature", "invalid_type"),
    ("temperature too high", "/v1/chat/completions", {**CHAT, "temperature": 3}, 400, "temperature",
     "invalid_value"),
    ("top_p zero", "/v1/chat/completions", {**CHAT, "top_p": 0}, 400, "top_p", "invalid_value"),
    ("max_tokens a float", "/v1/chat/completions", {**CHAT, "max_tokens": 1.5}, 400, "max_tokens",
     "invalid_type"),
    ("max_tokens a boolean", "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": True},
     400, "max_tokens", "invalid_type"),
    ("max_tokens zero", "/v1/chat/completions", {**CHAT, "max_tokens": 0}, 400, "max_tokens",
     "invalid_value"),
    ("stream a string", "/v1/chat/completions", {**CHAT, "stream": "yes"}, 400, "stream", "invalid_type"),
    ("five stops", "/v1/chat/completions", {**CHAT, "stop": list("abcde")}, 400, "stop", "invalid_value"),
    ("negative seed", "/v1/chat/completions", {**CHAT, "seed": -1}, 400, "seed", "invalid_value"),
    ("n is 2", "/v1/chat/completions", {**CHAT, "n": 2}, 400, "n", "unsupported_value"),
    ("unknown parameter", "/v1/chat/completions", {**CHAT, "max_token": 5}, 400, "max_token",
     "unknown_parameter"),
    ("unsupported parameter on", "/v1/chat/completions", {**CHAT, "logprobs": True}, 400, "logprobs",
     "unsupported_parameter"),
    ("token id outside the vocabulary", "/v1/completions", {"model": "tiny", "prompt": [1, 99999]},
     400, "prompt", "invalid_value"),
    ("two prompts", "/v1/completions", {"model": "tiny", "prompt": ["a", "b"]}, 400, "prompt",
     "unsupported_value"),
    ("unknown model", "/v1/completions", {"model": "llama", "prompt": "a"}, 404, "model",
     "model_not_found"),
    ("body over the limit", "/v1/completions", {"model": "tiny", "prompt": "a" * 70_000}, 413, None,
     "request_too_large"),
    ("unknown endpoint", "/v1/embeddings", {"model": "tiny", "input": "a"}, 404, None, "404"),
]


@pytest.mark.parametrize(("name", "path", "body", "status", "param", "code"), BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_openai_error_body(tiny: ThreadServer, name: str, path: str, body: Any,
                                            status: int, param: str | None, code: str | None) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(tiny.url + path, content=raw, headers={"Content-Type": "application/json"},
                   timeout=WAIT)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["code"] == code
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    assert error["type"] in ("invalid_request_error", "not_found_error")


def test_wrong_method_is_405_with_error_body(tiny: ThreadServer) -> None:
    r = httpx.get(tiny.url + "/v1/chat/completions", timeout=WAIT)
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "405"


def test_body_limit_holds_without_content_length(tiny: ThreadServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(20):
            yield b"a" * 8192
        yield b'"}'

    r = httpx.post(tiny.url + "/v1/completions", content=chunks(), timeout=WAIT)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


# -- security --------------------------------------------------------------------------------------


def test_api_key_guards_every_endpoint_but_health() -> None:
    model = load_model(TINY, notify=None)
    with ThreadServer(create_app(model, model_id="tiny", api_key="s3cret")) as server:
        assert httpx.get(server.url + "/health", timeout=WAIT).status_code == 200
        for method, path in (("GET", "/v1/models"), ("GET", "/metrics"),
                             ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = httpx.request(method, server.url + path, json=CHAT, headers=headers, timeout=WAIT)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(server, api_key="wrong").models.list()
        reply = client(server, api_key="s3cret").chat.completions.create(**CHAT)
        assert reply.choices[0].message.content is not None
        r = httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer s3cret"}, timeout=WAIT)
        assert r.status_code == 200 and "edgert_requests_total" in r.text
    model.close()


def test_loopback_is_the_default_and_other_hosts_are_warned_about() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert exposure_warning("127.0.0.1", None) is None
    warning = exposure_warning("0.0.0.0", None)
    assert warning is not None and "WARNING" in warning and "--api-key" in warning


def test_importing_edgert_core_does_not_load_the_web_stack() -> None:
    code = ("import sys, edgert_core; bad = [m for m in ('starlette', 'uvicorn', 'fastapi', "
            "'prometheus_client') if m in sys.modules]; assert not bad, bad; "
            "from edgert_core import create_app; assert 'starlette' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert edgert_core.create_app is create_app


# -- load: 8 clients x 5 requests ------------------------------------------------------------------


def test_load_8_clients_x_5_requests_all_answered_none_mixed_up(tiny: ThreadServer) -> None:
    c = client(tiny)
    prompts = {(i, j): f"client {i} asks question {j}" for i in range(8) for j in range(5)}

    def ask(prompt: str, stream: bool) -> str:
        messages = [{"role": "user", "content": prompt}]
        if not stream:
            reply = c.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                              max_tokens=32)
            return reply.choices[0].message.content or ""
        chunks = c.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                           max_tokens=32, stream=True)
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    single = {key: ask(p, False) for key, p in prompts.items()}  # one at a time
    assert len(set(single.values())) > 30  # different prompts, different answers: a mix-up shows

    def one_client(i: int) -> dict[tuple[int, int], str]:
        return {(i, j): ask(prompts[i, j], stream=(i + j) % 2 == 0) for j in range(5)}

    with ThreadPoolExecutor(8) as pool:
        results = [f.result(timeout=120) for f in [pool.submit(one_client, i) for i in range(8)]]
    concurrent = {k: v for r in results for k, v in r.items()}
    assert concurrent == single
    metrics = httpx.get(tiny.url + "/metrics", timeout=WAIT).text
    assert metric(metrics, "edgert_queue_depth") == 0
    assert metric(metrics, "edgert_requests_running") == 0
    assert metric(metrics, 'edgert_requests_total{endpoint="/v1/chat/completions",status="200"}') >= 80
    assert metric(metrics, "edgert_time_to_first_token_seconds_count") >= 80
    assert metric(metrics, "process_resident_memory_bytes") > 10e6
    assert metric(metrics, "edgert_process_resident_memory_bytes") > 10e6


def metric(text: str, name: str) -> float:
    """The value of the sample ``name`` (with its labels, as exposed) in Prometheus text."""
    for line in text.splitlines():
        if not line.startswith("#") and line.rsplit(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name} in:\n{text}")


# -- the worker: FIFO, cancellation within one token, stop strings ------------------------------


def _job_events(job: Job) -> list[Any]:
    async def drain() -> list[Any]:
        return [e async for e in job.events()]

    return asyncio.run_coroutine_threadsafe(drain(), job.loop).result(WAIT)


@pytest.fixture()
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(WAIT)
    loop.close()


def _request(model: Model, max_tokens: int = 400) -> GenerationRequest:
    return GenerationRequest("completion", "tiny", model.encode("hello"), max_tokens)


def test_cancel_stops_the_generation_before_its_next_token(
        loop_thread: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(TINY, notify=None)
    generations: list[Generation] = []
    generate = model.generate

    def recorded(*args: Any, **kw: Any) -> Generation:
        generations.append(generate(*args, **kw))
        return generations[-1]

    monkeypatch.setattr(model, "generate", recorded)
    post = Job.post
    at_cancel: list[int] = []

    def post_then_cancel(job: Job, event: Any) -> None:  # runs on the engine thread, between tokens
        post(job, event)
        if isinstance(event, Delta) and not at_cancel and generations[0].stats.generated_tokens >= 3:
            at_cancel.append(generations[0].stats.generated_tokens)
            job.cancel()

    monkeypatch.setattr(Job, "post", post_then_cancel)
    worker = EngineWorker(model, max_queue=4)
    try:
        worker.start()
        job = worker.submit(_request(model), loop_thread)
        deadline = time.monotonic() + WAIT
        while not job.done:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert at_cancel and job.generated_tokens == at_cancel[0] < 400
        assert generations[0].stats.stop_reason == "stopped"
        assert worker.cancelled == 1 and worker.served == 0
    finally:
        assert worker.close()
        model.close()


def test_queue_is_fifo_bounded_and_a_cancelled_waiting_job_never_runs(
        loop_thread: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(TINY, notify=None)
    worker = EngineWorker(model, max_queue=2)
    gate = threading.Event()
    post = Job.post

    def held(job: Job, event: Any) -> None:  # the first job holds the engine until the gate opens
        if job.request.max_tokens == 8:
            gate.wait(WAIT)
        post(job, event)

    monkeypatch.setattr(Job, "post", held)
    try:
        worker.start()
        first = worker.submit(_request(model, 8), loop_thread)
        deadline = time.monotonic() + WAIT
        while worker.running is not first:  # it runs, held at its first token
            assert time.monotonic() < deadline
            time.sleep(0.005)
        second = worker.submit(_request(model, 5), loop_thread)
        third = worker.submit(_request(model, 6), loop_thread)
        with pytest.raises(APIError) as info:
            worker.submit(_request(model, 7), loop_thread)
        assert info.value.status == 503 and info.value.code == "queue_full"
        assert int(info.value.headers["Retry-After"]) >= 1
        second.cancel()
        assert worker.depth == 1 and second.done
        gate.set()
        ends = [_job_events(j)[-1] for j in (first, third)]
        assert [type(e) for e in ends] == [Finished, Finished]
        assert [e.usage.completion_tokens for e in ends] == [8, 6]
        assert second.generated_tokens == 0 and worker.served == 2
    finally:
        gate.set()
        assert worker.close()
        model.close()


def test_one_model_cannot_have_two_engines() -> None:
    model = load_model(TINY, notify=None)
    a = EngineWorker(model, max_queue=1)
    b = EngineWorker(model, max_queue=1)
    try:
        a.start()
        with pytest.raises(edgert_core.EdgeRTError, match="already served"):
            b.start()
    finally:
        assert a.close()
        model.close()


@pytest.mark.parametrize(("pieces", "stops", "expected", "hit"), [
    (["The", " capital", " of"], (" cap",), "The", True),
    (["a", "b", "c", "d"], ("bc",), "a", True),
    (["ab", "c"], ("abd",), "abc", False),
    (["x<", "|end", "|>y"], ("<|end|>",), "x", True),
    (["no", " stop"], (), "no stop", False),
])
def test_stop_matcher_holds_back_what_may_start_a_stop(pieces: list[str], stops: tuple[str, ...],
                                                       expected: str, hit: bool) -> None:
    matcher = StopMatcher(stops)
    out = []
    stopped = False
    for piece in pieces:
        text, stopped = matcher.push(piece)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(matcher.flush())
    assert "".join(out) == expected and stopped == hit


# -- README: the curl and openai examples, run as written -------------------------------------------


def _readme_block(language: str, needle: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Serving"):]
    for block in re.findall(rf"```{language}\n(.*?)```", section, flags=re.S):
        if needle in block:
            return str(block)
    raise AssertionError(f"README's Serving section has no {language} block with {needle!r}")


def test_readme_curl_and_openai_examples_run(smol: ThreadServer, cli_answers: dict[str, str]) -> None:
    curl = _readme_block("bash", "curl").replace("http://127.0.0.1:8080", smol.url)
    out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60, check=True)
    reply = json.loads(out.stdout)
    assert reply["choices"][0]["message"]["content"] == cli_answers["chat"]
    code = _readme_block("python", "from openai import OpenAI").replace("http://127.0.0.1:8080",
                                                                         smol.url)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout.removesuffix("\n") == cli_answers["chat"]


# -- the command's bad input: one error line, exit 2 -------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--max-body", "lots"], "Cannot read memory budget 'lots'"),
    (["--max-queue", "-1"], "--max-queue must be at least 0"),
    (["--log-level", "loud"], "--log-level must be one of"),
    (["--api-key", " "], "--api-key is empty"),
    (["--kv-cache", "q4"], "Unknown KV cache precision 'q4'"),  # the model options reach load_model
    (["--activations", "q4"], "no activation mode 'q4'"),
])
def test_serve_command_refuses_bad_options(args: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from model_helpers import run_cli as run_in_process

    code, out, err = run_in_process(["serve", "--model", str(TINY), *args], monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_serve_command_says_when_the_port_is_taken(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from model_helpers import run_cli as run_in_process

    taken = bind("127.0.0.1", 0)
    try:
        port = str(taken.getsockname()[1])
        code, _, err = run_in_process(["serve", "--model", str(TINY), "--port", port], monkeypatch, capsys)
    finally:
        taken.close()
    assert code == 2 and f"error: Cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_serve_without_the_extra_says_how_to_install_it() -> None:
    code = ("import sys; sys.modules['uvicorn'] = None; from edgert_core.cli.app import main; "
            f"sys.argv = ['edge-rt', 'serve', '--model', {str(TINY)!r}]; main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "error: The server needs the serve extra" in out.stderr
    assert "pip install 'edgert-core[serve]'" in out.stderr and "Traceback" not in out.stderr


def test_serve_help_shows_every_option_with_help_and_default() -> None:
    import typer.main
    from test_cli_core import edge_rt, option_entry

    from edgert_core.cli import app

    sub = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    out = edge_rt("serve", "--help", env={"COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    options = [p for p in sub.params if p.param_type_name == "option"]
    assert {"--host", "--port", "--api-key", "--max-queue", "--max-body"} <= {p.opts[0] for p in options}
    for param in options:
        assert param.help, f"edge-rt serve {param.opts[0]} has no help text"
        entry = option_entry(out.stdout, param.opts[0])
        if param.default is not None and param.default is not False and not param.is_flag:
            assert f"[default: {param.default}]" in entry, entry


def test_the_app_mounted_in_another_starts_its_engine_on_first_use() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    model = load_model(TINY, notify=None)
    inner = create_app(model, model_id="tiny", api_key="k")
    outer = Starlette(routes=[Mount("/llm", app=inner)])  # the outer lifespan does not reach it
    try:
        with ThreadServer(outer) as server:
            assert not inner.state.worker.started
            assert httpx.get(server.url + "/llm/health", timeout=WAIT).status_code == 503  # no key needed
            c = openai.OpenAI(base_url=server.url + "/llm/v1", api_key="k", timeout=WAIT, max_retries=0)
            reply = c.completions.create(model="tiny", prompt="hello", max_tokens=5)
            assert reply.usage is not None and reply.usage.completion_tokens == 5
            assert httpx.get(server.url + "/llm/health", timeout=WAIT).json() == {"status": "ok"}
            assert httpx.get(server.url + "/llm/metrics", timeout=WAIT).status_code == 401
    finally:
        assert inner.state.worker.close()
        model.close()
