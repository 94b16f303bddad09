"""One pipelined Redis connection parsed by hiredis, with a watchdog (the enqueuer's transport)."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from msgspec import Struct
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection

from shared.queue.format import QueueUnavailable, pack


class Endpoint(Struct, frozen=True):
    """Where and how to connect, read from a redis-py pool's connection settings."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    verify_tls: bool = True

    @classmethod
    def of(cls, redis: Redis) -> Endpoint:
        pool = redis.connection_pool
        kwargs = pool.connection_kwargs
        return cls(
            host=kwargs.get("host") or "localhost",
            port=int(kwargs.get("port") or 6379),
            path=kwargs.get("path"),
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            tls=issubclass(pool.connection_class, SSLConnection),
            verify_tls=kwargs.get("ssl_cert_reqs", "required") not in ("none", ssl.CERT_NONE),
        )


class Connection(asyncio.Protocol):
    """One pipelined Redis connection: commands go out in order, replies resolve
    the oldest waiting future, parsed by hiredis.

    A watchdog aborts the connection when replies are owed and none has arrived
    for ``timeout_s``; losing the connection fails every waiting future with
    :class:`QueueUnavailable`, so no caller waits longer than about that.
    """

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self._last_progress = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    @classmethod
    async def open(cls, endpoint: Endpoint, timeout_s: float) -> Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if endpoint.tls:
            context = ssl.create_default_context()
            if not endpoint.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        async with asyncio.timeout(timeout_s):
            if endpoint.path is not None:
                _, connection = await loop.create_unix_connection(
                    lambda: cls(timeout_s), endpoint.path, ssl=context
                )
            else:
                _, connection = await loop.create_connection(
                    lambda: cls(timeout_s), endpoint.host, endpoint.port, ssl=context
                )
            try:
                await connection._handshake(endpoint)
            except BaseException:
                connection.close()
                raise
        return connection

    async def _handshake(self, endpoint: Endpoint) -> None:
        commands: list[tuple[str, bytes]] = []
        if endpoint.password is not None:
            if endpoint.username:
                commands.append(("AUTH", pack(b"AUTH", endpoint.username, endpoint.password)))
            else:
                commands.append(("AUTH", pack(b"AUTH", endpoint.password)))
        if endpoint.db:
            commands.append(("SELECT", pack(b"SELECT", endpoint.db)))
        for name, command in commands:
            reply = await self.call([command])[0]
            if isinstance(reply, hiredis.ReplyError):
                raise QueueUnavailable(f"redis refused {name}: {reply}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast("asyncio.Transport", transport)

    def call(self, commands: Sequence[bytes]) -> list[asyncio.Future[Any]]:
        """Send ``commands`` (packed RESP) in one write; one future per reply."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self.send(b"".join(commands), futures)
        return futures

    def send(self, data: bytes, futures: Sequence[asyncio.Future[Any]]) -> None:
        """Write ``data`` holding ``len(futures)`` commands, whose replies resolve ``futures``."""
        if self.closed or self._transport is None:
            fail(futures, QueueUnavailable("the connection to redis is closed"))
            return
        if not self._waiting:
            self._last_progress = asyncio.get_running_loop().time()
        self._waiting.extend(futures)
        self._transport.write(data)
        if self._watchdog is None:
            self._arm_watchdog()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := self._reader.gets()) is not False:
                future = waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            # Not what we asked for: nothing on this connection can be trusted any more.
            self._abort(f"unexpected data from redis: {type(exc).__name__}")
            return
        self._last_progress = asyncio.get_running_loop().time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        reason = f"lost the connection to redis: {type(exc).__name__ if exc else 'closed by peer'}"
        error = QueueUnavailable(reason)
        if exc is not None:
            error.__cause__ = exc
        fail(self._waiting, error)
        self._waiting.clear()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _abort(self, reason: str) -> None:
        self.closed = True
        fail(self._waiting, QueueUnavailable(reason))
        self._waiting.clear()
        if self._transport is not None:
            self._transport.abort()

    def _arm_watchdog(self) -> None:
        self._watchdog = asyncio.get_running_loop().call_later(self._timeout_s / 4, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiting or self.closed:
            return
        if asyncio.get_running_loop().time() - self._last_progress > self._timeout_s:
            self._abort(f"redis did not answer within {self._timeout_s:g} s")
            return
        self._arm_watchdog()


def fail(futures: Sequence[asyncio.Future[Any]], error: QueueUnavailable) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)
