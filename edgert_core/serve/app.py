"""The ASGI app: OpenAI's HTTP API in front of one loaded model.

``create_app(model)`` returns a Starlette app with ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (each with ``stream: true`` as server-sent events ending in
``data: [DONE]``), ``GET /health`` and ``GET /metrics``. Every refused request gets OpenAI's error
body. An outer ASGI layer (:class:`Gate`) checks the API key and the body size before a handler
runs, and counts every answer by endpoint and status.

The app's lifespan starts the engine worker (:class:`~edgert_core.serve.worker.EngineWorker`) and
stops it; an application that mounts the app inside another (whose lifespan does not reach it)
gets the worker started on the first request, and stops it with ``app.state.worker.close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgert_core.errors import EdgeRTError
from edgert_core.serve.errors import AUTHENTICATION, INVALID_REQUEST, NOT_FOUND, SERVER, APIError, error_body
from edgert_core.serve.metrics import CONTENT_TYPE, Metrics
from edgert_core.serve.protocol import (
    GenerationRequest,
    ResponseBuilder,
    chat_prompt,
    parse_chat,
    parse_completion,
)
from edgert_core.serve.worker import Delta, EngineWorker, Failed, Finished, Job

if TYPE_CHECKING:
    from edgert_core.api import Model

DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
ENDPOINTS = ("/v1/models", "/v1/chat/completions", "/v1/completions", "/health", "/metrics")
OPEN_ENDPOINTS = frozenset({"/health"})  # the only ones that need no API key


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class Gate:
    """The outer ASGI layer: the API key (``Authorization: Bearer``; not for ``/health``), the
    request body size limit (413 past ``max_body_bytes``), and the requests metric."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int,
                 metrics: Metrics) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        endpoint = path if path in ENDPOINTS else "other"
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await _error_response(refusal)(scope, receive, counted)
                return
            body = await self._read_body(scope, receive)
            if isinstance(body, APIError):
                await _error_response(body)(scope, receive, counted)
                return
            if body is None:
                status = 499  # the client went away while sending its request
                return
            await self.app(scope, _replay(body, receive), counted)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()

    def _refusal(self, scope: Scope, path: str) -> APIError | None:
        if self.api_key is None or path in OPEN_ENDPOINTS:
            return None
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                              self.api_key.encode()):
            return None
        message = ("Incorrect API key provided." if given else
                   "You didn't provide an API key: send it as 'Authorization: Bearer KEY'.")
        return APIError(401, message, type=AUTHENTICATION, code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"})

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | APIError | None:
        """The whole body, or a 413 past the limit (by ``Content-Length`` before reading, or by what
        arrives), or ``None`` when the client disconnected."""
        limit = self.max_body_bytes
        too_large = APIError(413, f"The request body is larger than this server's limit of {limit} "
                             "bytes.", code="request_too_large")
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            piece = message.get("body", b"")
            size += len(piece)
            if size > limit:
                return too_large
            chunks.append(piece)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _route_path(scope: Scope) -> str:
    """The request's path inside this app (without the prefix it is mounted at)."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    return path[len(root):] if root and path.startswith(root) else path


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then passes on to the client's (whose next
    message is ``http.disconnect`` when the client goes away)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class JobStream(StreamingResponse):
    """A streamed response whose job is cancelled however the response ends (sent in full, the
    client gone, the server shutting down)."""

    def __init__(self, job: Job, content: AsyncIterator[str]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


async def _stream(job: Job, build: ResponseBuilder) -> AsyncIterator[str]:
    first = build.request.kind == "chat"
    if first:
        yield _sse(build.chunk(None, first=True))
    async for event in job.events():
        if isinstance(event, Delta):
            yield _sse(build.chunk(event.text))
        elif isinstance(event, Finished):
            yield _sse(build.chunk(None, event.reason))
            if build.request.include_usage:
                yield _sse(build.usage_chunk(event.usage))
        else:
            yield _sse(error_body(event.message, type=SERVER))
    yield "data: [DONE]\n\n"


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _collect(job: Job) -> tuple[str, Finished | Failed]:
    pieces: list[str] = []
    async for event in job.events():
        if isinstance(event, Delta):
            pieces.append(event.text)
        else:
            return "".join(pieces), event
    raise AssertionError("a job's events end with Finished or Failed")  # pragma: no cover


def create_app(
    model: Model,
    *,
    model_id: str | None = None,
    aliases: Sequence[str] = (),
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """The OpenAI-compatible ASGI app serving ``model`` (loaded with
    :func:`edgert_core.load_model`; the app runs it from one thread, so do not generate with it
    elsewhere meanwhile).

    ``model_id``: the name ``/v1/models`` lists (default: the model's name); requests may also
    name it by one of ``aliases``. ``api_key``: when set, every endpoint but ``/health`` needs
    ``Authorization: Bearer <api_key>``. ``max_queue``: requests that may wait for the engine
    (beyond them, 503 with ``Retry-After``). ``max_body_bytes``: the largest request body.
    """
    if model.tokenizer is None:
        raise EdgeRTError(f"Model {model.name} has no tokenizer, so it cannot be served over the "
                          "OpenAI API; give a model with one (a .gguf file, or a folder with "
                          "tokenizer.json).")
    if max_body_bytes < 1:
        raise EdgeRTError(f"The body size limit must be at least 1 byte, got {max_body_bytes}.")
    served = [model_id or model.name, *[a for a in aliases if a and a != (model_id or model.name)]]
    # the chat template once now: a broken one fails here, not on every request, and what it
    # loads (jinja2) is in place before the engine's RSS baseline is taken
    chat_prompt(model, [{"role": "user", "content": "hello"}])
    worker = EngineWorker(model, max_queue=max_queue)

    def pool_bytes() -> int:
        return model.engine.pool.held_bytes if model.prepared else 0

    def baseline_bytes() -> int:
        return model.engine.baseline_rss_bytes if model.prepared else 0

    metrics = worker.metrics = Metrics(
        queue_depth=lambda: worker.depth, running=lambda: int(worker.running is not None),
        pool_bytes=pool_bytes, baseline_bytes=baseline_bytes, budget_bytes=model.context.budget_bytes)
    started = int(time.time())

    def model_object() -> dict[str, Any]:
        return {"id": served[0], "object": "model", "created": started, "owned_by": "edge-rt"}

    async def health(request: Request) -> Response:
        if worker.ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_object()]})

    async def get_model(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in served:
            raise APIError(404, f"The model '{name}' does not exist; this server serves "
                           f"'{served[0]}'.", param="model", code="model_not_found")
        return JSONResponse(model_object())

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def body_of(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"We could not parse the JSON body of your request ({exc}); send "
                           "a JSON object.", code="invalid_json") from None

    async def respond(request: Request, req: GenerationRequest) -> Response:
        if not worker.started:  # mounted in an app whose lifespan does not start it
            await asyncio.to_thread(worker.start)
        job = worker.submit(req, asyncio.get_running_loop())
        build = ResponseBuilder(req)
        if req.stream:
            return JobStream(job, _stream(job, build))
        collecting = asyncio.ensure_future(_collect(job))
        gone = asyncio.ensure_future(_until_disconnect(request.receive))
        try:
            await asyncio.wait({collecting, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not collecting.done():
                collecting.cancel()
                job.cancel()
        if not collecting.done() or collecting.cancelled():
            return Response(status_code=499)  # the client went away: nobody reads this
        text, end = collecting.result()
        if isinstance(end, Failed):
            raise APIError(500, end.message, type=SERVER)
        return JSONResponse(build.complete(text, end.reason, end.usage))

    # checking a request applies the chat template and tokenizes the prompt: in a thread, so a long
    # prompt does not hold up the streams the event loop is sending meanwhile
    async def chat(request: Request) -> Response:
        body = await body_of(request)
        return await respond(request, await asyncio.to_thread(parse_chat, body, model, served))

    async def completions(request: Request) -> Response:
        body = await body_of(request)
        return await respond(request, await asyncio.to_thread(parse_completion, body, model, served))

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return _error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        kind = NOT_FOUND if status == 404 else INVALID_REQUEST
        message = (f"No endpoint {request.method} {request.url.path}; this server has "
                   f"{', '.join(ENDPOINTS)}." if status in (404, 405) else str(exc.detail))
        return JSONResponse(error_body(message, type=kind, code=str(status)), status_code=status,
                            headers=exc.headers)

    async def edgert_error(request: Request, exc: Exception) -> Response:
        return JSONResponse(error_body(str(exc)), status_code=400)

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse(error_body(f"Internal server error: {type(exc).__name__}.", type=SERVER),
                            status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(worker.start)
        try:
            yield
        finally:
            await asyncio.to_thread(worker.close)

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{name:path}", get_model, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        middleware=[Middleware(Gate, api_key=api_key, max_body_bytes=max_body_bytes,
                               metrics=metrics)],
        exception_handlers={APIError: api_error, HTTPException: http_error,
                            EdgeRTError: edgert_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.metrics = metrics
    app.state.model = model
    app.state.served = served
    return app
