"""The enqueuer: one Lua call per job, the calls of one event-loop turn in one pipeline.

Two things differ from ``ArqRedis.enqueue_job``: the serializer is msgspec
MessagePack, never pickle (SPEC §4.2); and one enqueue is one Lua call that
checks the job and result keys and writes the job atomically, and the enqueues
issued in one event-loop turn travel in one pipeline. arq's enqueue costs three
round trips (WATCH, EXISTS, MULTI/EXEC) and answers ``None`` both for "exists"
and for a connection lost before EXEC; the script answers exactly one of
"stored" or "exists", and any transport failure is an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Final

import hiredis
from redis.asyncio import Redis

from shared.contracts import QueuedEvent
from shared.queue.connection import Connection, Endpoint, fail
from shared.queue.format import (
    ENQUEUE_SHA,
    JOB_EXPIRES_MS,
    JOB_FUNCTION,
    JOB_PREFIX,
    LOAD_SCRIPT,
    RESULT_PREFIX,
    ArqJob,
    QueueUnavailable,
    encoder,
    pack,
)

ENQUEUE_TIMEOUT_S: Final = 2.0
"""Longest an enqueue waits for Redis before failing with :class:`QueueUnavailable`."""


class Enqueuer:
    """Enqueue jobs with one Lua call each, pipelining the calls of one loop turn.

    Every caller still awaits its own answer: ``True`` when its job was stored,
    ``False`` when a job or result with that id already exists, or
    :class:`QueueUnavailable` when Redis did not confirm the write within
    ``timeout_s`` (refused connection, lost connection, hung server, error reply).

    The enqueuer keeps its own connection to the Redis behind ``redis`` (same
    host, database and credentials) rather than borrowing the pool's: the calls
    of one event-loop turn are packed with hiredis and written at once, and
    replies are matched to callers in order as hiredis parses them. redis-py's
    asyncio pipeline does the same job with several times the CPU per command,
    which the ingest path's budget (SPEC §6) cannot afford.
    """

    def __init__(
        self, redis: Redis, queue_name: str, *, timeout_s: float = ENQUEUE_TIMEOUT_S
    ) -> None:
        self._endpoint = Endpoint.of(redis)
        self._queue_name = queue_name.encode()
        self._timeout_s = timeout_s
        self._outbox: list[bytes] = []
        self._outbox_futures: list[asyncio.Future[Any]] = []
        self._flush_scheduled = False
        self._connection: Connection | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def enqueue(self, job_id: str, job: QueuedEvent) -> bool:
        """Store ``job`` under ``job_id`` unless that id is already queued or finished."""
        now_ms = int(time.time() * 1000)
        job_id_b = job_id.encode()
        command = pack(
            b"EVALSHA", ENQUEUE_SHA, b"3",
            JOB_PREFIX + job_id_b, RESULT_PREFIX + job_id_b, self._queue_name,
            job_id_b, encoder.encode(ArqJob(None, JOB_FUNCTION, (job,), {}, now_ms)),
            JOB_EXPIRES_MS, now_ms,
        )  # fmt: skip
        reply = await self._call(command)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # Redis restarted and lost its script cache; NOSCRIPT means nothing ran.
            await self.load_script()
            reply = await self._call(command)
        if isinstance(reply, hiredis.ReplyError):
            raise QueueUnavailable(f"redis refused the enqueue: {reply}")
        return bool(reply == 1)

    async def load_script(self) -> None:
        """Load the enqueue script (done on demand too, after a NOSCRIPT reply)."""
        reply = await self._call(LOAD_SCRIPT)
        if isinstance(reply, hiredis.ReplyError):
            raise QueueUnavailable(f"redis refused SCRIPT LOAD: {reply}")

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with :class:`QueueUnavailable`."""
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        fail(self._outbox_futures, QueueUnavailable("the enqueuer is closed"))
        self._outbox.clear()
        self._outbox_futures.clear()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _call(self, command: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._outbox.append(command)
        self._outbox_futures.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox:
            return
        connection = self._connection
        if connection is None or connection.closed:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            return
        data = b"".join(self._outbox)
        futures = self._outbox_futures
        self._outbox, self._outbox_futures = [], []
        connection.send(data, futures)

    async def _connect(self) -> None:
        try:
            self._connection = await Connection.open(self._endpoint, self._timeout_s)
        except (OSError, TimeoutError, QueueUnavailable) as exc:
            error = (
                exc
                if isinstance(exc, QueueUnavailable)
                else QueueUnavailable(f"cannot connect to redis: {type(exc).__name__}: {exc}")
            )
            error.__cause__ = exc
            futures, self._outbox, self._outbox_futures = self._outbox_futures, [], []
            fail(futures, error)
        finally:
            self._connecting = None
        self._flush()
