"""``edge-rt serve``: an OpenAI-compatible HTTP server for one loaded model.

:func:`create_app` builds the ASGI app (Starlette) for applications that mount or run it
themselves; :func:`serve` runs it with uvicorn, as the CLI does. Needs the ``serve`` extra
(``pip install 'edgert-core[serve]'``); importing :mod:`edgert_core` alone does not load it.

* :mod:`edgert_core.serve.protocol`: OpenAI's request and response shapes, checked and built.
* :mod:`edgert_core.serve.worker`: the one engine thread and its bounded FIFO queue.
* :mod:`edgert_core.serve.app`: the routes, streaming, the API key and body size gate.
* :mod:`edgert_core.serve.metrics`: the Prometheus metrics.
* :mod:`edgert_core.serve.server`: binding and signal handling around uvicorn.
"""

from __future__ import annotations

from edgert_core.serve.errors import APIError, MissingExtraError

try:
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise MissingExtraError(
        f"The server needs the serve extra ({exc.name} is missing): "
        "pip install 'edgert-core[serve]'."
    ) from None

from edgert_core.serve.app import create_app
from edgert_core.serve.server import serve

__all__ = ["APIError", "MissingExtraError", "create_app", "serve"]
