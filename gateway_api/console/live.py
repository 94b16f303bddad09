"""The status relay: one Redis subscription per API process, fanned out as Server-Sent Events.

Workers PUBLISH each status change (:mod:`shared.live`). :class:`StatusRelay`
holds the process's only subscription to that channel (opened in the app's
lifespan) and hands every message to each connected client's bounded buffer;
a client too slow to keep up loses its oldest messages and is told to
``resync`` (reload what it shows) instead of slowing the others.
:func:`event_stream` turns one client's buffer into the ``text/event-stream``
of ``GET /v1/admin/stream`` and the console's ``GET /console/stream``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Final

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.live import StatusChange, decode_change

__all__ = ["CLIENT_BUFFER", "KEEPALIVE_S", "StatusRelay", "Subscriber", "event_stream"]

CLIENT_BUFFER: Final = 256
"""Messages buffered per client before its oldest are dropped."""
KEEPALIVE_S: Final = 15.0
"""A comment line this often keeps proxies from closing an idle stream."""
_RESUBSCRIBE_S: Final = 1.0

log = structlog.get_logger("gateway_api.console")


class Subscriber:
    """One client's buffer; ``overflowed`` is set once messages were dropped."""

    def __init__(self, accept: Callable[[StatusChange], bool]) -> None:
        self.accept = accept
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(CLIENT_BUFFER)
        self.overflowed = False

    def offer(self, change: StatusChange, data: bytes) -> None:
        if not self.accept(change):
            return
        if self.queue.full():
            self.overflowed = True
            self.queue.get_nowait()
        self.queue.put_nowait(data)


class StatusRelay:
    """Subscribe once to ``channel`` on ``redis``; fan each message out to the subscribers."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self._redis = redis
        self._channel = channel
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="status-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    @contextlib.contextmanager
    def subscribe(self, accept: Callable[[StatusChange], bool]) -> Iterator[Subscriber]:
        subscriber = Subscriber(accept)
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)

    def _fan_out(self, data: bytes) -> None:
        try:
            change = decode_change(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("relay.bad_message", size=len(data))
            return
        for subscriber in tuple(self._subscribers):
            subscriber.offer(change, data)

    async def _run(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.connected.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._fan_out(message["data"])
            except (RedisError, OSError) as exc:
                self.connected.clear()
                log.warning("relay.disconnected", error=repr(exc))
                await asyncio.sleep(_RESUBSCRIBE_S)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py stub


async def event_stream(
    relay: StatusRelay, accept: Callable[[StatusChange], bool]
) -> AsyncGenerator[bytes]:
    """SSE bytes for one client: ``retry``, then one ``status`` event per accepted change.

    The client's subscription lasts as long as the generator (a disconnect closes it).
    """
    with relay.subscribe(accept) as subscriber:
        yield b"retry: 2000\n: connected\n\n"
        async for chunk in _changes(subscriber):
            yield chunk


async def _changes(subscriber: Subscriber) -> AsyncGenerator[bytes]:
    while True:
        try:
            data = await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE_S)
        except TimeoutError:
            yield b": keepalive\n\n"
            continue
        if subscriber.overflowed:
            subscriber.overflowed = False
            yield b"event: resync\ndata: {}\n\n"
        yield b"event: status\ndata: " + data + b"\n\n"
