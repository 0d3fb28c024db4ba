"""The errors the server answers with, in OpenAI's shape: ``{"error": {"message", "type", "param",
"code"}}`` and an HTTP status. Raised anywhere while a request is handled, turned into a response by
the app (:func:`edgert_core.serve.app.create_app`)."""

from __future__ import annotations

from typing import Any

from edgert_core.errors import EdgeRTError

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
SERVER = "server_error"


class APIError(EdgeRTError):
    """A request the server refuses: ``status`` is the HTTP status, the rest is OpenAI's error body.
    ``headers`` go on the response too (``Retry-After`` on a full queue)."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST,
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


class MissingExtraError(EdgeRTError, ImportError):
    """The ``serve`` extra (starlette, uvicorn, prometheus-client) is not installed."""


def error_body(message: str, *, type: str = INVALID_REQUEST, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid(message: str, param: str | None, code: str = "invalid_value") -> APIError:
    """A 400 for a parameter the request got wrong."""
    return APIError(400, message, param=param, code=code)
