"""Running the app with uvicorn, as ``edge-rt serve`` does: bind, serve, stop cleanly on a signal.

On SIGINT or SIGTERM the server stops accepting connections, lets the requests in flight finish
for up to ``shutdown_timeout`` seconds, then cancels what is left (a generation stops within one
token), stops the engine worker, and :func:`serve` returns normally, so the process exits 0.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from edgert_core.errors import EdgeRTError
from edgert_core.serve.app import create_app

if TYPE_CHECKING:
    from edgert_core.api import Model

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_SHUTDOWN_TIMEOUT = 10.0


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """What to tell the user when ``host`` lets other machines reach the server; ``None`` on loopback."""
    if is_loopback(host):
        return None
    key = ("requests need the --api-key" if api_key else
           "and there is NO --api-key, so anyone who can reach it can use it")
    return (f"WARNING: binding {host} makes this server reachable from other machines ({key}); "
            "the traffic is plain HTTP. Bind 127.0.0.1 (the default) unless you mean it.")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); one clear error when taken."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise EdgeRTError(f"Cannot resolve --host {host!r}: {exc.strerror}.") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise EdgeRTError(f"Cannot listen on {host}:{port}: {exc.strerror}; choose another --port "
                          "(0 picks a free one).") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, telling ``on_started`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()


def serve(
    model: Model,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    model_id: str | None = None,
    aliases: tuple[str, ...] = (),
    api_key: str | None = None,
    max_queue: int = 16,
    max_body_bytes: int = 1024 * 1024,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    log_level: str = "info",
    notify: Callable[[str], None] = print,
) -> int:
    """Serve ``model`` until SIGINT or SIGTERM; returns the number of generations that ran to their
    end. ``notify`` gets the one-line notices (the address once listening, the warning when
    ``host`` is not a loopback address)."""
    app = create_app(model, model_id=model_id, aliases=aliases, api_key=api_key, max_queue=max_queue,
                     max_body_bytes=max_body_bytes)
    warning = exposure_warning(host, api_key)
    if warning is not None:
        notify(warning)
    sock = bind(host, port)
    worker = app.state.worker
    try:
        worker.start()  # prepare the engine before the first connection is accepted
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=int(shutdown_timeout),
                                lifespan="on", access_log=log_level in ("debug", "trace"))
        url = url_of(sock)
        server = _Server(config, lambda: notify(
            f"serving {model.name} at {url}/v1 (OpenAI API; Ctrl-C or SIGTERM stops)"))
        # uvicorn raises the signal that stopped it again once it has shut down; a handler that
        # does nothing lets serve() return instead, so the process exits 0
        main = threading.current_thread() is threading.main_thread()  # signals only reach it
        quiet = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        for sig in quiet:
            signal.signal(sig, _ignore)
        try:
            server.run(sockets=[sock])
        finally:
            for sig, handler in quiet.items():
                signal.signal(sig, handler)
    finally:
        worker.close()
        sock.close()
    return int(worker.served)


def _ignore(sig: int, frame: FrameType | None) -> None:
    return None
