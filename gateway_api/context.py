"""Per-request context: the request id, its log binding, and the HTTP metrics.

:class:`RequestContextMiddleware` wraps the whole Litestar app (outside
Litestar's exception handling and routing), so every answer, 404 and 405
included, carries ``X-Request-ID`` and is counted once. Litestar runs
app-level ``middleware=`` only for matched routes, which would miss exactly
the requests an operator wants to see.

Request id rules: an incoming ``X-Request-ID`` is kept when it is a sane token
(``[A-Za-z0-9._:-]{1,128}``), so a courier or a proxy can correlate; anything
else is replaced by a fresh 32-hex-digit id (a random prefix per app instance
plus a counter). The id is stored in ``scope["state"]``, bound in
``structlog.contextvars`` for every log line of the request, echoed in the
``X-Request-ID`` response header, and written into every JSON answer and every
queued job.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import re
import time
from typing import TYPE_CHECKING, Any, Final

import structlog
from litestar.enums import ScopeType

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from gateway_api.metrics import ApiMetrics

__all__ = [
    "REQUEST_ID_HEADER",
    "UNMATCHED_ROUTE",
    "RequestContextMiddleware",
    "request_id_of",
]

REQUEST_ID_HEADER: Final = "X-Request-ID"
_HEADER_NAME: Final = b"x-request-id"
_STATE_KEY: Final = "request_id"
_SANE_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
UNMATCHED_ROUTE: Final = "_unmatched"


def request_id_of(scope: Scope) -> str:
    """The id :class:`RequestContextMiddleware` gave this request."""
    request_id: str = scope["state"][_STATE_KEY]
    return request_id


def _structlog_var(key: str) -> contextvars.ContextVar[Any]:
    """The context variable ``structlog.contextvars`` keeps ``key`` in (one per key, for good).

    Found through the token binding returns, and left unbound: setting it is
    binding ``key``, resetting its token is ``reset_contextvars``.
    """
    token = structlog.contextvars.bind_contextvars(**{key: ...})[key]
    token.var.reset(token)
    return token.var


def _incoming_request_id(headers: Any) -> bytes | None:
    for name, value in headers:
        if name == _HEADER_NAME:
            return value if _SANE_REQUEST_ID.fullmatch(value) else None
    return None


class RequestContextMiddleware:
    """Pure ASGI middleware: request id, log context, ``X-Request-ID``, HTTP metrics."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # Generated ids: a random per-app prefix and a counter, 32 hex digits in all.
        # Unique without a syscall per request (os.urandom costs ~1 µs); ids need
        # not be unpredictable, only distinct across processes and requests.
        self._id_prefix = os.urandom(8).hex()
        self._id_counter = itertools.count()
        # Set and reset directly: bind_contextvars and reset_contextvars build a
        # key and a dict per call, ~1 µs of the ingest path's CPU.
        self._log_request_id = _structlog_var("request_id")

    def new_request_id(self) -> str:
        """A request id no other request of any process has."""
        return f"{self._id_prefix}{next(self._id_counter):016x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        started = time.perf_counter()
        raw_id = _incoming_request_id(scope["headers"])
        if raw_id is None:
            request_id = self.new_request_id()
            raw_id = request_id.encode()
        else:
            request_id = raw_id.decode()
        scope.setdefault("state", {})[_STATE_KEY] = request_id
        status = 500

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_HEADER_NAME, raw_id)]
            await send(message)

        token = self._log_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            self._log_request_id.reset(token)
            self.metrics.observe_request(
                scope.get("path_template") or UNMATCHED_ROUTE,
                method,
                status,
                time.perf_counter() - started,
            )
