"""Running the app in-process the way a server does: its ASGI lifespan, and raw ASGI calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
from litestar import Litestar

BASE_URL = "http://gateway.test"


def asgi_client(app: Litestar) -> httpx.AsyncClient:
    """An HTTP client that calls ``app`` directly over ASGI, in this event loop."""
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar's precise ASGI types
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL)


@contextlib.asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[None]:
    """Drive the app's ASGI lifespan (startup, then shutdown) in a task of its own.

    Litestar's ``app.lifespan()`` cannot be held across a pytest fixture's yield:
    it enters an anyio task group, which must be exited by the task that entered it.
    """
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))  # type: ignore[arg-type]
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        try:
            await task
        except Exception as exc:
            raise RuntimeError(f"app failed to start: {started.get('message')}") from exc
        raise RuntimeError(f"app failed to start: {started.get('message')}")
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await task


class RawExchange:
    """One HTTP request sent to the app as raw ASGI messages, body in the given chunks.

    Records how many body chunks the app actually pulled, and what it sent back.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = list(chunks)
        self.chunks_read = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.chunks_read < len(self._chunks):
            chunk = self._chunks[self.chunks_read]
            self.chunks_read += 1
            return {
                "type": "http.request",
                "body": chunk,
                "more_body": self.chunks_read < len(self._chunks),
            }
        await asyncio.Event().wait()  # the client stays connected, sending nothing more
        raise AssertionError("unreachable")

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        status: int = self.sent[0]["status"]
        return status

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.sent[0]["headers"] if k == name), None)

    async def post(self, app: Litestar, path: str, headers: dict[str, str]) -> None:
        """POST to ``path`` with ``headers`` (no content-length: the body is streamed)."""
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("gateway.test", 80),
            "state": {},
        }
        await app(scope, self.receive, self.send)  # type: ignore[arg-type]
