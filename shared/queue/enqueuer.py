"""The enqueuer: one Lua call per job, the calls of one event-loop turn in one pipeline.

Two things differ from ``ArqRedis.enqueue_job``: the serializer is msgspec
MessagePack, never pickle (docs/contract.md §4.2); and one enqueue is one Lua call that
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
from collections.abc import Sequence
from typing import Any, Final

import hiredis
import msgspec
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

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
    ReplicationUnconfirmed,
    encoder,
    pack,
)

ENQUEUE_TIMEOUT_S: Final = 2.0
"""Longest an enqueue waits for Redis before failing with :class:`QueueUnavailable`."""


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


# The EVALSHA of one enqueue in RESP, formatted in one step (half of what
# hiredis.pack_command costs for its ten arguments): the array header, command,
# script and key count are constant; the job's keys, id, record and score vary.
_ENQUEUE_HEAD: Final = b"*10\r\n" + b"".join(map(_bulk, (b"EVALSHA", ENQUEUE_SHA, b"3")))
_EXPIRES: Final = _bulk(b"%d" % JOB_EXPIRES_MS)
_ENQUEUE_RESP: Final = (
    _ENQUEUE_HEAD.replace(b"%", b"%%")
    + b"$%d\r\n" + JOB_PREFIX.replace(b"%", b"%%") + b"%b\r\n"
    + b"$%d\r\n" + RESULT_PREFIX.replace(b"%", b"%%") + b"%b\r\n"
    + b"$%d\r\n%b\r\n" * 3
    + _EXPIRES.replace(b"%", b"%%")
    + b"$%d\r\n%d\r\n"
)  # fmt: skip


def enqueue_command(queue_name: bytes, job_id: bytes, job: bytes, now_ms: int) -> bytes:
    """The ``EVALSHA`` that stores ``job`` under ``job_id`` in ``queue_name`` at ``now_ms``.

    Byte for byte what :func:`shared.queue.format.pack` makes of the same arguments.
    """
    return _ENQUEUE_RESP % (
        len(JOB_PREFIX) + len(job_id), job_id,
        len(RESULT_PREFIX) + len(job_id), job_id,
        len(queue_name), queue_name,
        len(job_id), job_id,
        len(job), job,
        len(b"%d" % now_ms), now_ms,
    )  # fmt: skip


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
    which the ingest path's budget (docs/contract.md §6) cannot afford.

    High availability (docs/contract.md §4.5):

    * with ``sentinels`` the primary's address is asked of the Sentinels on
      every (re)connect, so a failover is followed without a restart; a write
      refused with ``READONLY`` (a demoted primary) drops the connection, and
      the next call rediscovers;
    * with ``ack_replicas`` = n > 0 each pipelined batch of enqueues is followed
      by one ``WAIT n``, bounded by half of ``timeout_s``; an enqueue answers
      only once that confirms, else :class:`ReplicationUnconfirmed` (a
      :class:`QueueUnavailable`). The job may
      still be on the primary then: a retry finds it and answers ``False``
      (duplicate) only when its own ``WAIT`` confirms.
    """

    def __init__(
        self,
        redis: Redis,
        queue_name: str,
        *,
        timeout_s: float = ENQUEUE_TIMEOUT_S,
        ack_replicas: int = 0,
        sentinels: Sequence[tuple[str, int]] = (),
        sentinel_master: str = "mymaster",
    ) -> None:
        self._endpoint = Endpoint.of(redis)
        self._queue_name = queue_name.encode()
        self._timeout_s = timeout_s
        self._ack_replicas = ack_replicas
        wait_ms = max(1, int(timeout_s * 500))
        self._wait_command = pack(b"WAIT", ack_replicas, wait_ms)
        self._sentinel = (
            Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                list(sentinels), socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
            if sentinels
            else None
        )
        self._sentinel_master = sentinel_master
        self._outbox: list[bytes] = []
        self._outbox_futures: list[asyncio.Future[Any]] = []
        self._batch_ack: asyncio.Future[Any] | None = None
        self._flush_scheduled = False
        self._connection: Connection | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def enqueue(self, job_id: str, job: QueuedEvent) -> bool:
        """Store ``job`` under ``job_id`` unless that id is already queued or finished."""
        now_ms = int(time.time() * 1000)
        job_id_b = job_id.encode()
        command = enqueue_command(
            self._queue_name,
            job_id_b,
            encoder.encode(ArqJob(None, JOB_FUNCTION, (job,), {}, now_ms)),
            now_ms,
        )
        reply_future, ack = self._call(command, replicate=True)
        reply = await reply_future
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # Redis restarted and lost its script cache; NOSCRIPT means nothing ran.
            await self.load_script()
            reply_future, ack = self._call(command, replicate=True)
            reply = await reply_future
        if isinstance(reply, hiredis.ReplyError):
            if str(reply).startswith("READONLY"):
                # A demoted primary: find the new one on the next call.
                self._drop_connection()
            raise QueueUnavailable(f"redis refused the enqueue: {reply}")
        if ack is not None:
            acked = await ack
            if not isinstance(acked, int) or acked < self._ack_replicas:
                shown = acked if isinstance(acked, int) else f"an error ({acked})"
                raise ReplicationUnconfirmed(
                    f"{shown} of {self._ack_replicas} replicas acknowledged the enqueue in time"
                )
        return bool(reply == 1)

    async def load_script(self) -> None:
        """Load the enqueue script (done on demand too, after a NOSCRIPT reply)."""
        reply, _ = self._call(LOAD_SCRIPT)
        reply = await reply
        if isinstance(reply, hiredis.ReplyError):
            raise QueueUnavailable(f"redis refused SCRIPT LOAD: {reply}")

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with :class:`QueueUnavailable`."""
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        self._fail_outbox(QueueUnavailable("the enqueuer is closed"))
        self._drop_connection()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _call(
        self, command: bytes, *, replicate: bool = False
    ) -> tuple[asyncio.Future[Any], asyncio.Future[Any] | None]:
        """Queue ``command`` for the next flush: its reply, and with ``replicate``
        the reply of the batch's ``WAIT`` (None when no replicas are awaited)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._outbox.append(command)
        self._outbox_futures.append(future)
        ack: asyncio.Future[Any] | None = None
        if replicate and self._ack_replicas:
            if self._batch_ack is None:
                self._batch_ack = loop.create_future()
                # A caller that stops at its own reply (an error) never awaits it.
                self._batch_ack.add_done_callback(_retrieve)
            ack = self._batch_ack
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future, ack

    def _fail_outbox(self, error: QueueUnavailable) -> None:
        futures, self._outbox, self._outbox_futures = self._outbox_futures, [], []
        if self._batch_ack is not None:
            futures.append(self._batch_ack)
            self._batch_ack = None
        fail(futures, error)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox:
            return
        connection = self._connection
        if connection is None or connection.closed:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            return
        commands = self._outbox
        futures = self._outbox_futures
        self._outbox, self._outbox_futures = [], []
        if self._batch_ack is not None:
            commands.append(self._wait_command)
            futures.append(self._batch_ack)
            self._batch_ack = None
        connection.send(b"".join(commands), futures)

    async def _connect(self) -> None:
        try:
            endpoint = self._endpoint
            if self._sentinel is not None:
                host, port = await self._sentinel.discover_master(self._sentinel_master)
                endpoint = msgspec.structs.replace(endpoint, host=str(host), port=int(port))
            self._connection = await Connection.open(endpoint, self._timeout_s)
        except (OSError, TimeoutError, RedisError, QueueUnavailable) as exc:
            error = (
                exc
                if isinstance(exc, QueueUnavailable)
                else QueueUnavailable(f"cannot connect to redis: {type(exc).__name__}: {exc}")
            )
            error.__cause__ = exc
            self._fail_outbox(error)
        finally:
            self._connecting = None
        self._flush()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
