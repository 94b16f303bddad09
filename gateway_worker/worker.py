"""The arq worker, configured from :class:`~shared.settings.Settings` in one place.

:func:`build_worker_settings` returns the keyword arguments of
:class:`arq.worker.Worker`; each choice absorbs one arq 0.28 behaviour
(docs/contract.md §4.2, ``docs/queues.md``):

* ``max_tries`` = ``max_attempts`` + :data:`ARQ_MAX_TRIES_HEADROOM`: arq checks
  it *before* calling us and then fails the job without our dead-lettering,
  so our own counter decides and arq's is only a last-resort bound. Its
  counter also grows on runs that are not failed attempts (deferrals behind
  another job's lease, retries while MongoDB is unreachable, cancellations);
  the headroom covers hours of MongoDB outage at the backoff cap.
* ``redis_settings`` (through Sentinel when configured) with a redis-py
  retry policy (:data:`REDIS_RETRIES` attempts, exponential backoff up to
  5 s) so a Redis restart or failover does not end the worker.
* msgspec MessagePack for jobs and results, never pickle.
* a health-check key of this worker's own, refreshed every
  ``GATEWAY_WORKER_HEALTH_INTERVAL_S``.
* ``job_completion_wait`` = ``GATEWAY_SHUTDOWN_GRACE_S``: on SIGTERM running
  jobs get that long to finish before they are cancelled (and re-run).

Clients are opened in ``on_startup`` and closed in ``on_shutdown``; they live
in arq's ``ctx``, never in module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, Final

import httpx
import structlog
import uvloop
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError

from gateway_worker.announce import StatusPublisher
from gateway_worker.claim import claim_replicated
from gateway_worker.downstream import Downstream
from gateway_worker.jobs import EventProcessor
from gateway_worker.metrics import MetricsServer, WorkerMetrics
from shared.queue import (
    JOB_EXPIRES_MS,
    JOB_FUNCTION,
    client_for,
    deserialize,
    serialize,
    settings_for,
    worker_health_key,
)
from shared.settings import Settings, check_settings, mongo_write_concern_w, sentinel_addresses
from shared.storage.mongo import open_mongo

__all__ = [
    "ARQ_MAX_TRIES_HEADROOM",
    "REDIS_RETRIES",
    "GatewayWorker",
    "build_worker_settings",
    "default_worker_id",
    "process_event",
    "run_worker",
]

ARQ_MAX_TRIES_HEADROOM: Final = 250
"""arq tries allowed beyond our ``max_attempts`` (see the module docstring)."""
REDIS_RETRIES: Final = 30
"""redis-py retries per command; with backoff capped at 5 s, about two minutes of Redis outage."""
USER_AGENT: Final = "courier-event-gateway-worker"

log = structlog.get_logger("gateway_worker")


def default_worker_id(settings: Settings) -> str:
    """``GATEWAY_WORKER_ID``, or ``{hostname}-{pid}``."""
    return settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"


async def process_event(ctx: dict[Any, Any], payload: Any) -> str:
    """The arq job (``JOB_FUNCTION``): process one ``QueuedEvent`` payload."""
    processor: EventProcessor = ctx["processor"]
    return await processor.process(ctx["job_id"], ctx["job_try"], payload)


class GatewayWorker(Worker):
    """arq's worker, surviving a connection lost while it claims a job, not
    re-checking the jobs it runs itself, and running a job only once its claim
    is replicated when ``GATEWAY_ACK_REPLICAS`` > 0.

    arq claims a job under ``WATCH``; a connection lost there (a Redis
    failover, docs/contract.md §4.5) surfaces from redis-py as
    :class:`~redis.exceptions.WatchError` or ``ConnectionError`` outside arq's
    own handling and would end the worker. Here it ends only this poll round:
    the claim that was being made is undone (counter and semaphore, exactly
    as arq does for a job it skips) and the next poll, on a new connection to
    the current primary, claims the job again.

    A running job stays in the queue until it ends, so every poll lists this
    worker's own running jobs first; arq would spend four Redis round trips on
    each to find its in-progress key. They are skipped here, before arq's claim
    (the jobs of other workers still get arq's full check).

    ``run_job`` runs arq's job only after :func:`~gateway_worker.claim.claim_replicated`
    confirms the claim on ``GATEWAY_ACK_REPLICAS`` replicas (nothing to do when 0);
    otherwise it returns before arq reads the job, leaving arq's records as they are.
    While arq's ``run_job`` has not returned, the claim is renewed (:class:`_ClaimRenewal`):
    a run whose cancellation stalls past ``in_progress_timeout_s`` (a MongoDB call
    against a starved store) keeps its job, instead of another worker claiming it
    under the live run and arq then recording ``job expired`` (docs/reliability.md).
    """

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id in job_ids:
            running = self.tasks.get(job_id.decode())
            if running is not None and not running.done():
                continue
            try:
                await super().start_jobs([job_id])
            except (WatchError, RedisConnectionError) as exc:
                self.job_counter = self.job_counter - 1
                self.sem.release()
                log.warning("worker.claim_interrupted", error=f"{type(exc).__name__}: {exc}")
                return

    async def run_job(self, job_id: str, score: int) -> None:
        replicas = self.ctx["settings"].ack_replicas
        if replicas and not await claim_replicated(
            self.pool,
            job_id,
            replicas=replicas,
            claim_ttl_s=self.in_progress_timeout_s,
            patience_s=self.job_timeout_s,
        ):
            return
        renewal = _ClaimRenewal(self.pool, job_id, self.in_progress_timeout_s)
        try:
            await super().run_job(job_id, score)
        finally:
            renewal.stop()


class _ClaimRenewal:
    """Keeps one run's arq claim alive until :meth:`stop`.

    Every half of ``claim_ttl_s``, ``PEXPIRE`` sets the in-progress key's expiry
    back to ``claim_ttl_s``. ``PEXPIRE`` never creates a key, so a claim arq's
    finish has deleted stays deleted; a worker that dies stops renewing, and its
    claim expires as before (which lets another worker re-run the job). A timer,
    not a task, per run: jobs last milliseconds and the first renewal is seconds
    away, so a run that ends in time costs no Redis call. Redis errors are logged
    once per run and retried on the next period; the run never sees them.

    Renewal stops after ``MAX_RENEWALS`` (the claim then lives at most four times
    its usual life, 60 s at the defaults): enough for a cancelled run stalled in a
    MongoDB call to return, while a run that never returns still loses its claim
    and the job runs again elsewhere, as without renewal.
    """

    MAX_RENEWALS = 6

    __slots__ = (
        "_handle",
        "_job_id",
        "_left",
        "_period_s",
        "_pool",
        "_renewing",
        "_ttl_ms",
        "_warned",
    )

    def __init__(self, pool: ArqRedis, job_id: str, claim_ttl_s: float) -> None:
        self._pool = pool
        self._job_id = job_id
        self._ttl_ms = int(claim_ttl_s * 1000)
        self._period_s = claim_ttl_s / 2
        self._renewing: asyncio.Task[None] | None = None
        self._warned = False
        self._left = self.MAX_RENEWALS
        self._handle = asyncio.get_running_loop().call_later(self._period_s, self._due)

    def _due(self) -> None:
        if self._left == 0:
            log.warning("job.claim_renewal_stopped", job_id=self._job_id)
            return
        self._left -= 1
        self._handle = asyncio.get_running_loop().call_later(self._period_s, self._due)
        # A renewal still waiting on Redis is not doubled; the next period tries again.
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._renew(), name="claim-renewal")

    async def _renew(self) -> None:
        try:
            await self._pool.pexpire(in_progress_key_prefix + self._job_id, self._ttl_ms)
        except (RedisError, OSError) as exc:
            if not self._warned:
                self._warned = True
                error = f"{type(exc).__name__}: {exc}"
                log.warning("job.claim_renewal_failed", job_id=self._job_id, error=error)

    def stop(self) -> None:
        """Renew no more (the run has returned)."""
        self._handle.cancel()
        if self._renewing is not None:
            self._renewing.cancel()


def run_worker(options: dict[str, Any]) -> None:
    """Run a :class:`GatewayWorker` built from ``options`` until it stops (SIGTERM, SIGINT).

    On uvloop, as the API: a worker's time is mostly small Redis and MongoDB
    exchanges, and the standard loop's socket writes and callbacks cost more per
    event than arq itself (docs/profiles/worker-before.md). arq's worker binds to
    the current event loop when it is built, so the loop is made first.
    """
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        GatewayWorker(**options).run()
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def build_worker_settings(settings: Settings, *, worker_id: str | None = None) -> dict[str, Any]:
    """Keyword arguments for :class:`arq.worker.Worker` running our job from ``settings``."""
    check_settings(settings)
    name = worker_id or default_worker_id(settings)
    sentinel: dict[str, Any] = {}
    if sentinel_addresses(settings):
        # arq's Sentinel pool has no retry policy; ours rides out the failover.
        sentinel["redis_pool"] = client_for(settings, timeout_s=5.0, retries=REDIS_RETRIES)
    return {
        "functions": [func(process_event, name=JOB_FUNCTION)],
        "queue_name": settings.queue_name,
        "redis_settings": settings_for(settings, retries=REDIS_RETRIES),
        **sentinel,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "expires_extra_ms": JOB_EXPIRES_MS,
        "job_timeout": settings.job_timeout_s,
        "keep_result": settings.keep_result_s,
        "max_tries": settings.max_attempts + ARQ_MAX_TRIES_HEADROOM,
        "max_jobs": settings.worker_concurrency,
        "poll_delay": settings.worker_poll_delay_s,
        "job_completion_wait": settings.shutdown_grace_s,
        "health_check_key": worker_health_key(settings.queue_name, name),
        "health_check_interval": settings.worker_health_interval_s,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "ctx": {"settings": settings, "worker_id": name},
    }


async def on_startup(ctx: dict[Any, Any]) -> None:
    """Open the clients and the metrics server; put the job's processor in ``ctx``."""
    settings: Settings = ctx["settings"]
    worker_id: str = ctx["worker_id"]
    stack = contextlib.AsyncExitStack()
    ctx["exit_stack"] = stack

    mongo = open_mongo(
        settings.mongo_url,
        timeout_s=settings.mongo_timeout_s,
        app_name=f"gateway-worker/{worker_id}",
        write_concern=mongo_write_concern_w(settings),
    )
    stack.push_async_callback(mongo.close)

    downstream: Downstream | None = None
    if settings.downstream_url and settings.downstream_secret:
        http = httpx.AsyncClient(
            timeout=settings.downstream_timeout_s,
            follow_redirects=False,
            headers={"user-agent": USER_AGENT},
            limits=httpx.Limits(max_connections=settings.worker_concurrency),
        )
        stack.push_async_callback(http.aclose)
        downstream = Downstream(
            http,
            settings.downstream_url,
            settings.downstream_secret,
            timeout_s=settings.downstream_timeout_s,
        )

    metrics = WorkerMetrics()
    server = MetricsServer.start(
        metrics.registry, host=settings.worker_metrics_host, port=settings.worker_metrics_port
    )
    stack.push_async_callback(server.stop)

    redis: ArqRedis = ctx["redis"]
    sampler = asyncio.create_task(
        _sample_queue_depth(redis, settings, metrics), name="queue-depth-sampler"
    )
    stack.push_async_callback(_cancel, sampler)
    publisher = StatusPublisher(redis)
    # Stopped first, then what is still queued is sent (the stack unwinds in reverse).
    stack.push_async_callback(publisher.flush)
    publishing = asyncio.create_task(publisher.run(), name="status-publisher")
    stack.push_async_callback(_cancel, publishing)

    ctx["processor"] = EventProcessor(
        db=mongo[settings.mongo_db],
        settings=settings,
        worker_id=worker_id,
        metrics=metrics,
        downstream=downstream,
        publish=publisher.publish,
    )
    log.info(
        "worker.started",
        worker_id=worker_id,
        queue=settings.queue_name,
        concurrency=settings.worker_concurrency,
        metrics_port=server.port,
        downstream=settings.downstream_url is not None,
        max_attempts=settings.max_attempts,
        job_timeout_s=settings.job_timeout_s,
        lease_s=settings.lease_s,
        shutdown_grace_s=settings.shutdown_grace_s,
    )


async def on_shutdown(ctx: dict[Any, Any]) -> None:
    """Close everything :func:`on_startup` opened (also after a partial startup)."""
    stack: contextlib.AsyncExitStack | None = ctx.get("exit_stack")
    if stack is not None:
        await stack.aclose()
    log.info("worker.stopped", worker_id=ctx.get("worker_id"))


async def _sample_queue_depth(redis: ArqRedis, settings: Settings, metrics: WorkerMetrics) -> None:
    while True:
        try:
            metrics.queue_depth.set(await redis.zcard(settings.queue_name))
        except (RedisError, OSError) as exc:
            log.debug("worker.queue_depth_unavailable", error=type(exc).__name__)
        await asyncio.sleep(settings.worker_health_interval_s)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
