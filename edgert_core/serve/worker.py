"""The one engine and the FIFO queue in front of it.

An :class:`EngineWorker` owns a loaded :class:`~edgert_core.api.Model` and one thread that runs
the model's generations one at a time, in the order they were submitted. At most ``max_queue``
requests wait; :meth:`EngineWorker.submit` refuses one more with a 503 and a ``Retry-After``.
Each :class:`Job` hands its text to the asyncio side through an :class:`asyncio.Queue` (posted
with ``call_soon_threadsafe``); :meth:`Job.cancel` (a client that went away) takes a waiting job
out of the queue, and stops a running one before its next token is computed.

Every generation starts from an empty KV cache, so an answer never depends on the requests before
it: a greedy request gives what ``edge-rt run`` gives for the same prompt in a fresh process.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgert_core.errors import EdgeRTError
from edgert_core.serve.errors import SERVER, APIError
from edgert_core.serve.protocol import GenerationRequest, Usage

if TYPE_CHECKING:
    from edgert_core.api import Model
    from edgert_core.serve.metrics import Metrics

log = logging.getLogger("edgert_core.serve")

#: How long :meth:`EngineWorker.close` waits for the running generation to stop (it stops within
#: one token once cancelled).
JOIN_SECONDS = 60.0


@dataclass(frozen=True)
class Delta:
    """Text the generation added (never empty)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The generation ended: ``reason`` is OpenAI's ``stop`` or ``length``."""

    reason: str
    usage: Usage


@dataclass(frozen=True)
class Failed:
    """The generation could not run (a server-side fault); the message says why."""

    message: str


Event = Delta | Finished | Failed


class StopMatcher:
    """Cuts generated text at the first of the ``stop`` strings, across token boundaries: text that
    could be the start of a stop string is held back until the next piece shows whether it is."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """The text safe to emit after ``piece``, and whether a stop string was reached (the text
        then ends just before it, and nothing after it is emitted)."""
        text = self.held + piece
        hits = [i for s in self.stops if (i := text.find(s)) >= 0]
        if hits:
            self.held = ""
            return text[: min(hits)], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:k]):
                    keep = k
                    break
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """What was held back, at the end of the generation."""
        text, self.held = self.held, ""
        return text


class Job:
    """One submitted request: its events arrive on :meth:`events`; :meth:`cancel` stops it."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.submitted = time.perf_counter()
        self.done = False  # set by the worker when the job left it (finished, failed or cancelled)
        self.generated_tokens = 0  # set by the worker when its generation ends
        self._worker: EngineWorker | None = None

    def post(self, event: Event) -> None:
        """From the worker thread: hand ``event`` to the asyncio side."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            self.cancelled.set()

    async def events(self) -> AsyncIterator[Event]:
        """The job's events up to and including its :class:`Finished` or :class:`Failed`."""
        while True:
            event = await self.queue.get()
            yield event
            if not isinstance(event, Delta):
                return

    def cancel(self) -> None:
        """Stop the job: out of the queue if it waits, before its next token if it runs; a no-op
        once it has ended."""
        self.cancelled.set()
        if self._worker is not None:
            self._worker.discard(self)


_serving: weakref.WeakSet[Model] = weakref.WeakSet()  # models that have a running worker
_serving_lock = threading.Lock()


class EngineWorker:
    """The thread that runs a model's generations, one at a time, from a bounded FIFO queue."""

    def __init__(self, model: Model, *, max_queue: int, metrics: Metrics | None = None) -> None:
        if max_queue < 0:
            raise EdgeRTError(f"max_queue must be 0 or more, got {max_queue}.")
        self.model = model
        self.max_queue = max_queue
        self.metrics = metrics
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping = False
        self.running: Job | None = None
        self.served = 0  # generations that ran to their end
        self.cancelled = 0  # jobs cancelled (waiting or running)
        self._mean_seconds = 1.0  # running mean of a generation's time, for Retry-After

    # -- the asyncio side -------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests waiting (the running one not included)."""
        return len(self._waiting)

    @property
    def started(self) -> bool:
        """True once :meth:`start` has returned (the engine is prepared)."""
        return self._ready.is_set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._error is None and not self._stopping

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> Job:
        """Queue ``request``; a 503 with ``Retry-After`` when ``max_queue`` requests already wait,
        or when the server is shutting down."""
        self.start()
        job = Job(request, loop)
        with self._cond:
            if self._stopping:
                raise APIError(503, "The server is shutting down; try again later.", type=SERVER,
                               code="shutting_down")
            busy = self.running is not None or bool(self._waiting)
            if busy and len(self._waiting) >= self.max_queue:
                wait = math.ceil(self._mean_seconds * (len(self._waiting) + 1))
                retry = max(1, min(wait, 600))
                if self.metrics is not None:
                    self.metrics.rejected.labels("queue_full").inc()
                raise APIError(
                    503, f"The server is busy: {len(self._waiting)} requests are waiting (the queue "
                    f"holds {self.max_queue}); retry after {retry} s.", type=SERVER,
                    code="queue_full", headers={"Retry-After": str(retry)})
            job._worker = self
            self._waiting.append(job)
            self._cond.notify()
        return job

    def discard(self, job: Job) -> None:
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                job.done = True
                self.cancelled += 1
                if self.metrics is not None:
                    self.metrics.finished.labels("cancelled").inc()

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread and prepare the engine (load resident weights, take the RSS baseline);
        returns when it is ready, raising what preparing raised. Idempotent."""
        with self._cond:
            if self._thread is None:
                with _serving_lock:
                    if self.model in _serving:
                        raise EdgeRTError(
                            f"Model {self.model.name} is already served by another app; one model "
                            "has one engine, so serve it from one create_app only.")
                    _serving.add(self.model)
                self._thread = threading.Thread(target=self._main, name="edgert-serve-engine",
                                                daemon=True)
                self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def close(self, timeout: float = JOIN_SECONDS) -> bool:
        """Refuse new requests, cancel the waiting ones and the running one (it stops within one
        token), and join the thread. True when the thread has ended (the model is free again)."""
        with self._cond:
            self._stopping = True
            waiting = list(self._waiting)
            running = self.running
            self._cond.notify_all()
        for job in waiting:
            job.cancel()
        if running is not None:
            running.cancelled.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.error("the engine thread did not stop within %.0f s", timeout)
            return False
        with _serving_lock:
            _serving.discard(self.model)
        return True

    # -- the engine thread ------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            _ = self.model.engine  # prepare now, not on the first request
        except BaseException as exc:  # handed to start(), which raises it in the caller
            self._error = exc
            with _serving_lock:
                _serving.discard(self.model)
            return
        finally:
            self._ready.set()
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if not self._waiting:
                    return  # stopping, and nothing waits
                job = self._waiting.popleft()
                self.running = job
            try:
                self._run(job)
            except Exception as exc:  # a fault of the server, not of the request
                log.exception("generation failed")
                job.post(Failed(f"The generation failed: {exc}"))
                if self.metrics is not None:
                    self.metrics.finished.labels("error").inc()
            finally:
                job.done = True
                with self._cond:
                    self.running = None

    def _run(self, job: Job) -> None:
        metrics = self.metrics
        if job.cancelled.is_set():
            self.cancelled += 1
            if metrics is not None:
                metrics.finished.labels("cancelled").inc()
            return
        req = job.request
        model = self.model
        model.engine.cached_ids.clear()  # from an empty cache: no answer depends on the one before
        gen = model.generate(req.prompt_ids, max_tokens=req.max_tokens, temperature=req.temperature,
                             top_p=req.top_p, seed=req.seed)
        matcher = StopMatcher(req.stop)
        reason: str | None = None
        first = True
        try:
            for token in gen:
                if first and token.id >= 0:
                    first = False
                    if metrics is not None:
                        metrics.ttft.observe(time.perf_counter() - job.submitted)
                text, hit = matcher.push(token.text)
                if text:
                    job.post(Delta(text))
                if hit:
                    reason = "stop"
                    break
                if job.cancelled.is_set():  # before the next token is computed
                    break
        finally:
            gen.close()  # a no-op when it ran to its end
        generated = job.generated_tokens = gen.stats.generated_tokens
        if metrics is not None:
            metrics.prompt_tokens.inc(len(req.prompt_ids))
            metrics.generated_tokens.inc(generated)
        if job.cancelled.is_set() and reason is None:
            self.cancelled += 1
            if metrics is not None:
                metrics.finished.labels("cancelled").inc()
            return
        if reason is None:
            tail = matcher.flush()
            if tail:
                job.post(Delta(tail))
            reason = "length" if gen.stats.stop_reason in ("max_tokens", "max_context") else "stop"
        elapsed = time.perf_counter() - job.submitted
        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * elapsed
        self.served += 1
        if metrics is not None:
            metrics.latency.observe(elapsed)
            metrics.finished.labels(reason).inc()
        job.post(Finished(reason, Usage(len(req.prompt_ids), generated)))
