"""The arq queue as both sides see it: serializer, Redis connection policy, enqueue.

Jobs are written in arq's own format (``arq:job:<id>`` holding
``{t, f, a, k, et}`` and the id in the queue's sorted set), so arq workers and
``arq.jobs.Job`` read them unchanged. Two things differ from
``ArqRedis.enqueue_job``:

* the serializer is msgspec MessagePack, never pickle (SPEC §4.2);
* one enqueue is one Lua call that checks the job and result keys and writes
  the job atomically, and the enqueues issued in one event-loop turn travel in
  one pipeline (:class:`Enqueuer`). arq's enqueue costs three round trips
  (WATCH, EXISTS, MULTI/EXEC) and answers ``None`` both for "exists" and for a
  connection lost before EXEC; the script answers exactly one of "stored" or
  "exists", and any transport failure is an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar, Final, cast

import hiredis
import msgspec
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix, result_key_prefix
from msgspec import Struct
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.contracts import QueuedEvent

__all__ = [
    "ENQUEUE_TIMEOUT_S",
    "JOB_FUNCTION",
    "Enqueuer",
    "QueueUnavailable",
    "deserialize",
    "open_queue_pool",
    "redis_settings",
    "serialize",
    "worker_health_key",
]

JOB_FUNCTION: Final = "process_event"
"""Name of the arq job function that processes one :class:`QueuedEvent`."""
JOB_EXPIRES_MS: Final = 86_400_000
"""A job not started within this long is dropped by arq (its ``expires_extra_ms``)."""
WORKER_HEALTH_PREFIX: Final = "gateway:worker-health:"


class QueueUnavailable(Exception):
    """The queue could not durably store a job (Redis down, timed out, or erroring).

    The root of the queue's errors; ``code`` is its stable machine name.
    """

    code: ClassVar[str] = "queue_unavailable"


def _enc_hook(obj: object) -> object:
    # arq stores exceptions as job results (e.g. JobExecutionFailed); keep their text.
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    raise NotImplementedError(f"cannot serialize {type(obj).__name__}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.msgpack.Decoder()


def serialize(obj: Any) -> bytes:
    """arq ``job_serializer``: MessagePack via msgspec."""
    return _encoder.encode(obj)


def deserialize(data: bytes) -> Any:
    """arq ``job_deserializer``: MessagePack into plain Python values."""
    return _decoder.decode(data)


def worker_health_key(queue_name: str, worker_id: str) -> str:
    """Redis key one worker refreshes while alive (arq shares one per queue by default)."""
    return f"{WORKER_HEALTH_PREFIX}{queue_name}:{worker_id}"


def redis_settings(url: str, *, retries: int, timeout_s: float = 5.0) -> RedisSettings:
    """arq connection settings for ``url``.

    ``retries`` > 0 adds a redis-py retry policy with exponential backoff so a
    worker rides out a Redis restart instead of exiting (SPEC §4.2); the API
    passes 0 to fail fast and answer 503.
    """
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = max(1, int(timeout_s))
    settings.conn_retries = retries
    settings.conn_retry_delay = 1
    if retries:
        settings.retry = Retry(ExponentialBackoff(cap=5.0, base=0.1), retries)
        settings.retry_on_error = [RedisConnectionError, RedisTimeoutError, ConnectionError]
    return settings


async def open_queue_pool(url: str, queue_name: str, *, retries: int) -> ArqRedis:
    """An arq pool using our serializer (jobs and results are MessagePack)."""
    return await create_pool(
        redis_settings(url, retries=retries),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_name,
        expires_extra_ms=JOB_EXPIRES_MS,
    )


# KEYS: job key, result key, queue. ARGV: job id, serialized job, expiry ms, score.
_ENQUEUE_LUA: Final = b"""
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  return 0
end
redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return 1
"""
_ENQUEUE_SHA: Final = hashlib.sha1(_ENQUEUE_LUA, usedforsecurity=False).hexdigest().encode()


def _pack(*args: bytes | str | int) -> bytes:
    """One command in RESP, packed by hiredis (C); its stubs type the tuple wrongly."""
    return cast("bytes", hiredis.pack_command(cast("tuple[bytes]", args)))


_LOAD_SCRIPT: Final = _pack(b"SCRIPT", b"LOAD", _ENQUEUE_LUA)
_JOB_PREFIX: Final = job_key_prefix.encode()
_RESULT_PREFIX: Final = result_key_prefix.encode()
ENQUEUE_TIMEOUT_S: Final = 2.0
"""Longest an enqueue waits for Redis before failing with :class:`QueueUnavailable`."""


class _ArqJob(Struct, frozen=True):
    """arq's job record (``arq.jobs.serialize_job``): a map with these five keys."""

    t: int | None
    f: str
    a: tuple[QueuedEvent]
    k: dict[str, Any]
    et: int


class _Endpoint(Struct, frozen=True):
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
    def of(cls, redis: Redis) -> _Endpoint:
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


class _Connection(asyncio.Protocol):
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
    async def open(cls, endpoint: _Endpoint, timeout_s: float) -> _Connection:
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

    async def _handshake(self, endpoint: _Endpoint) -> None:
        commands: list[tuple[str, bytes]] = []
        if endpoint.password is not None:
            if endpoint.username:
                commands.append(("AUTH", _pack(b"AUTH", endpoint.username, endpoint.password)))
            else:
                commands.append(("AUTH", _pack(b"AUTH", endpoint.password)))
        if endpoint.db:
            commands.append(("SELECT", _pack(b"SELECT", endpoint.db)))
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
            _fail(futures, QueueUnavailable("the connection to redis is closed"))
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
        _fail(self._waiting, error)
        self._waiting.clear()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _abort(self, reason: str) -> None:
        self.closed = True
        _fail(self._waiting, QueueUnavailable(reason))
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


def _fail(futures: Sequence[asyncio.Future[Any]], error: QueueUnavailable) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


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
        self._endpoint = _Endpoint.of(redis)
        self._queue_name = queue_name.encode()
        self._timeout_s = timeout_s
        self._outbox: list[bytes] = []
        self._outbox_futures: list[asyncio.Future[Any]] = []
        self._flush_scheduled = False
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def enqueue(self, job_id: str, job: QueuedEvent) -> bool:
        """Store ``job`` under ``job_id`` unless that id is already queued or finished."""
        now_ms = int(time.time() * 1000)
        job_id_b = job_id.encode()
        command = _pack(
            b"EVALSHA", _ENQUEUE_SHA, b"3",
            _JOB_PREFIX + job_id_b, _RESULT_PREFIX + job_id_b, self._queue_name,
            job_id_b, _encoder.encode(_ArqJob(None, JOB_FUNCTION, (job,), {}, now_ms)),
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
        reply = await self._call(_LOAD_SCRIPT)
        if isinstance(reply, hiredis.ReplyError):
            raise QueueUnavailable(f"redis refused SCRIPT LOAD: {reply}")

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with :class:`QueueUnavailable`."""
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        _fail(self._outbox_futures, QueueUnavailable("the enqueuer is closed"))
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
            self._connection = await _Connection.open(self._endpoint, self._timeout_s)
        except (OSError, TimeoutError, QueueUnavailable) as exc:
            error = (
                exc
                if isinstance(exc, QueueUnavailable)
                else QueueUnavailable(f"cannot connect to redis: {type(exc).__name__}: {exc}")
            )
            error.__cause__ = exc
            futures, self._outbox, self._outbox_futures = self._outbox_futures, [], []
            _fail(futures, error)
        finally:
            self._connecting = None
        self._flush()
