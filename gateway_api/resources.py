"""What one API app owns: settings, metrics, source adapters and its clients.

One :class:`ApiResources` is built per app by :func:`gateway_api.app.create_app`
and stored in ``app.state.resources``. The clients (the arq Redis pool with its
:class:`~shared.queue.Enqueuer`, and the MongoDB client used only for
readiness) are opened by :meth:`ApiResources.open` in the Litestar lifespan
and closed by :meth:`ApiResources.close`; nothing is created per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from arq.connections import ArqRedis
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.exceptions import RedisError

from gateway_api.metrics import UNKNOWN_SOURCE_LABEL, ApiMetrics
from shared.adapters.base import Adapter
from shared.adapters.registry import build_adapter
from shared.contracts import CANONICAL_ADAPTERS, QueuedEvent
from shared.queue import (
    Enqueuer,
    QueueUnavailable,
    ReplicationUnconfirmed,
    close_client,
    pool_for,
)
from shared.settings import (
    Settings,
    SettingsError,
    check_settings,
    mongo_write_concern_w,
    redact_url,
    sentinel_addresses,
)
from shared.storage.mongo import Document, open_mongo

if TYPE_CHECKING:
    from litestar.types import Scope

__all__ = ["ENQUEUE_TIMEOUT_S", "INGEST_PATH", "INGEST_ROUTE", "ApiResources"]

INGEST_PATH: Final = "/v1/events/{source:str}"
"""The ingest route as declared."""
INGEST_ROUTE: Final = "/v1/events/{source}"
"""The ingest route's template as Litestar reports it (``scope["path_template"]``)."""
ENQUEUE_TIMEOUT_S: Final = 2.0
"""Longest an ingest request waits for Redis before answering 503."""
READINESS_TIMEOUT_S: Final = 1.0
"""Longest one readiness check waits for its dependency."""


def _adapters(settings: Settings) -> dict[str, Adapter]:
    # Settings built in code skip load_settings: run its cross-field checks here too.
    check_settings(settings)
    adapters: dict[str, Adapter] = {}
    for source_id, config in settings.sources.items():
        try:
            adapters[source_id] = build_adapter(config, tolerance_s=settings.signature_tolerance_s)
        except ValueError as exc:
            raise SettingsError(f"GATEWAY_SOURCES: {source_id}: {exc}") from exc
    return adapters


def _read_headers(adapters: Mapping[str, Adapter]) -> frozenset[bytes]:
    """Every header the ingest route reads: its own and each adapter's signature headers."""
    names = {b"content-length", b"content-type"}
    for adapter in adapters.values():
        names.update(name.encode() for name in adapter.header_names)
    return frozenset(names)


class ApiResources:
    """Everything one API app instance holds; clients exist between open() and close()."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.adapters = _adapters(settings)
        """Each configured source's adapter (verify, normalise), prepared once."""
        self.canonical = frozenset(
            source
            for source, adapter in self.adapters.items()
            if adapter.kind in CANONICAL_ADAPTERS
        )
        """Sources whose bodies are canonical events (the direct ingest path)."""
        self.read_headers = _read_headers(self.adapters)
        """Lower-case names of the headers ingest keeps from a request."""
        self.metrics = ApiMetrics({s: a.kind for s, a in self.adapters.items()})
        self._redis: ArqRedis | None = None
        self._enqueuer: Enqueuer | None = None
        self._mongo: AsyncMongoClient[Document] | None = None

    async def open(self) -> None:
        """Open the Redis pool (failing fast if Redis is unreachable) and the Mongo client."""
        settings = self.settings
        try:
            self._redis = await pool_for(settings, retries=0)
            self._enqueuer = Enqueuer(
                self._redis,
                settings.queue_name,
                timeout_s=ENQUEUE_TIMEOUT_S,
                ack_replicas=settings.ack_replicas,
                sentinels=sentinel_addresses(settings),
                sentinel_master=settings.redis_sentinel_master,
            )
            await self._enqueuer.load_script()
        except (RedisError, OSError) as exc:
            await self.close()
            raise QueueUnavailable(
                f"cannot reach Redis at {redact_url(settings.redis_url)}: {exc}"
            ) from exc
        # PyMongo connects lazily: this never blocks, and Mongo is only used for readiness.
        self._mongo = open_mongo(
            settings.mongo_url,
            timeout_s=READINESS_TIMEOUT_S,
            write_concern=mongo_write_concern_w(settings),
        )

    async def close(self) -> None:
        """Let in-flight enqueues finish (for a bounded time), then close the clients."""
        if self._enqueuer is not None:
            enqueuer, self._enqueuer = self._enqueuer, None
            # Every request waiting on them has been answered (at worst 503 after
            # ENQUEUE_TIMEOUT_S); a hung Redis must not hang shutdown too.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
                    await enqueuer.close()
        if self._redis is not None:
            await close_client(self._redis)
            self._redis = None
        if self._mongo is not None:
            await self._mongo.close()
            self._mongo = None

    @property
    def redis(self) -> ArqRedis:
        """The arq Redis pool (between open() and close())."""
        if self._redis is None:
            raise RuntimeError("the API's Redis pool is not open")
        return self._redis

    @property
    def enqueuer(self) -> Enqueuer:
        """The ingest route's enqueuer, shared with admin replays (between open() and close())."""
        if self._enqueuer is None:
            raise RuntimeError("the API's enqueuer is not open")
        return self._enqueuer

    @property
    def mongo_db(self) -> AsyncDatabase[Document]:
        """The gateway's database (between open() and close())."""
        if self._mongo is None:
            raise RuntimeError("the API's MongoDB client is not open")
        return self._mongo[self.settings.mongo_db]

    async def enqueue(self, job: QueuedEvent) -> bool:
        """Queue ``job`` under its idempotency key: True if stored, False if the key exists.

        One retry on :class:`QueueUnavailable` lets the first request after a
        Redis restart succeed even if it drew a pooled connection that died
        with the old server. A retry that finds the key existing proves the
        job is in Redis, so answering "duplicate" then is truthful. The whole
        call is bounded by the enqueuer's own deadline (:data:`ENQUEUE_TIMEOUT_S`
        per attempt): a hung Redis gives 503, not a hung request. An enqueue
        stored but not confirmed by the replicas (``GATEWAY_ACK_REPLICAS``) is
        not retried here, for the same reason: its retry would say "duplicate".
        """
        enqueuer = self._enqueuer
        if enqueuer is None:
            raise QueueUnavailable("the API is not started")
        key = job.idempotency_key
        started = time.perf_counter()
        try:
            try:
                return await enqueuer.enqueue(key, job)
            except ReplicationUnconfirmed:
                raise  # stored, unconfirmed: a retry now would answer "duplicate"
            except QueueUnavailable:
                return await enqueuer.enqueue(key, job)
        finally:
            self.metrics.enqueue_duration.observe(time.perf_counter() - started)

    def is_ingest(self, scope: Scope) -> bool:
        """Whether this request was routed to ``POST /v1/events/{source}``."""
        return scope.get("path_template") == INGEST_ROUTE

    def source_label(self, scope: Scope) -> str:
        """The request's source as a bounded metric/log label: configured id or ``_unknown``."""
        source = scope.get("path_params", {}).get("source")
        return source if source in self.adapters else UNKNOWN_SOURCE_LABEL
