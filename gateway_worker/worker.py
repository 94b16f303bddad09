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
import functools
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any, Final, Protocol

import httpx
import structlog
import uvloop
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, retry_key_prefix
from arq.jobs import SerializationError, deserialize_job_raw
from arq.utils import timestamp_ms
from arq.worker import JobExecutionFailed, Retry, Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError

from gateway_worker.announce import StatusPublisher
from gateway_worker.batch import (
    RETRY_KEY_TTL_S,
    ClaimedJob,
    ClaimScript,
    Finish,
    Finished,
    finish_jobs,
)
from gateway_worker.claim import claim_replicated, confirm_claims
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
    "BatchProcessor",
    "GatewayWorker",
    "build_worker_settings",
    "default_worker_id",
    "process_event",
    "run_worker",
]

ARQ_MAX_TRIES_HEADROOM: Final = 250
"""arq tries allowed beyond our ``max_attempts`` (see the module docstring)."""
BATCH_FAILED_RETRY_S: Final = 5.0
"""When a batch's processor raises (a defect), its jobs run again this much later."""
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


class BatchProcessor(Protocol):
    """What runs a batch's jobs: :meth:`EventProcessor.process_batch`."""

    async def process_batch(self, jobs: Sequence[tuple[str, int, Any]]) -> Sequence[object]:
        """Each job's result, or the ``Retry`` or exception that ends it, in order."""
        ...


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

    _claim_script: ClaimScript | None = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        if self.ctx["settings"].worker_batch > 1:
            await self._start_batches(job_ids)
            return
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
        renewal = _ClaimRenewal(self.pool, [job_id], self.in_progress_timeout_s)
        try:
            await super().run_job(job_id, score)
        finally:
            renewal.stop()

    async def _start_batches(self, listed: list[bytes]) -> None:
        """Claim the due jobs of ``listed`` in one round trip and run them in batches.

        ``GATEWAY_WORKER_BATCH`` > 1 (gateway_worker.batch): instead of arq's
        claim of each job (four round trips) and its run of each job (two more),
        one script claims every due job this worker has room for, each batch runs
        as one task (:meth:`_run_batch`), and one transaction finishes it. arq's
        counters, semaphore and ``tasks`` are kept as its own ``start_jobs`` keeps
        them, so its polling, health check, burst mode and shutdown work unchanged.

        Like arq's ``start_jobs``, which waits on its semaphore for a free slot, a
        poll that finds more due jobs than free slots waits for a batch to end and
        claims again, up to as many jobs as the poll listed; returning at once would
        leave the next claim to the next poll, at most ``worker_concurrency`` jobs
        per ``poll_delay``.
        """
        budget = len(listed)
        job_ids = self._not_running(listed)
        while budget > 0 and job_ids:
            room = self.max_jobs - self.job_counter
            if room < 1:
                running = {task for task in self.tasks.values() if not task.done()}
                if not running:
                    return
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            wanted = min(room, budget)
            token = uuid.uuid4().hex[:12]
            claimed = await self._claim(job_ids, wanted, token)
            if claimed is None:
                return
            await self._start(claimed, token)
            budget -= len(claimed)
            if len(claimed) < wanted or budget < 1:
                return  # nothing more due among the listed jobs
            listed = await self.pool.zrangebyscore(
                self.queue_name, min=float("-inf"), max=timestamp_ms(), start=0, num=budget
            )
            job_ids = self._not_running(listed)

    def _not_running(self, listed: Sequence[bytes | str]) -> list[str]:
        """``listed`` without the jobs this worker runs now."""
        job_ids = []
        for raw in listed:
            job_id = raw.decode() if isinstance(raw, bytes) else raw
            running = self.tasks.get(job_id)
            if running is None or running.done():
                job_ids.append(job_id)
        return job_ids

    async def _claim(self, job_ids: list[str], limit: int, token: str) -> list[ClaimedJob] | None:
        """Claim up to ``limit`` of ``job_ids`` under ``token``; ``None`` if Redis went away
        meanwhile."""
        if self._claim_script is None:
            self._claim_script = ClaimScript(self.pool)
        try:
            return await self._claim_script(
                self.queue_name,
                job_ids,
                limit=limit,
                claim_ttl_ms=int(self.in_progress_timeout_s * 1000),
                token=token,
            )
        except (RedisError, OSError) as exc:
            # A failover while claiming: the next poll claims again on the new primary
            # (a claim the lost reply made expires and its job runs then).
            log.warning("worker.claim_interrupted", error=f"{type(exc).__name__}: {exc}")
            return None

    async def _start(self, claimed: list[ClaimedJob], token: str) -> None:
        """One task per batch of ``claimed`` (under ``token``), counted as arq counts its jobs."""
        size = self.ctx["settings"].worker_batch
        for start in range(0, len(claimed), size):
            batch = claimed[start : start + size]
            self.job_counter += len(batch)
            for _ in batch:
                # Never waits: the claim took no more jobs than there were free slots.
                await self.sem.acquire()
            task = self.loop.create_task(self._run_batch(batch, token))
            task.add_done_callback(functools.partial(self._batch_done, len(batch)))
            for job in batch:
                self.tasks[job.job_id] = task

    def _batch_done(self, count: int, _task: asyncio.Task[None]) -> None:
        self.job_counter -= count
        for _ in range(count):
            self.sem.release()

    async def _run_batch(self, claimed: list[ClaimedJob], token: str) -> None:
        """Run one claimed batch and record every job's outcome (one transaction)."""
        job_ids = [job.job_id for job in claimed]
        renewal = _ClaimRenewal(self.pool, job_ids, self.in_progress_timeout_s)
        try:
            replicas = self.ctx["settings"].ack_replicas
            if replicas:
                held = set(
                    await confirm_claims(
                        self.pool,
                        job_ids,
                        token=token,
                        replicas=replicas,
                        claim_ttl_s=self.in_progress_timeout_s,
                        patience_s=self.job_timeout_s,
                    )
                )
                # Not held or not replicated: step aside, touching nothing (gateway_worker.claim).
                claimed = [job for job in claimed if job.job_id in held]
                if not claimed:
                    return
            finished = await self._run_claimed(claimed)
            await asyncio.shield(
                finish_jobs(
                    self.pool,
                    self.queue_name,
                    finished,
                    keep_result_ms=int(self.keep_result_s * 1000),
                    serializer=self.job_serializer or serialize,
                )
            )
        finally:
            renewal.stop()

    async def _run_claimed(self, claimed: list[ClaimedJob]) -> list[Finished]:
        """arq's ``run_job`` checks for each job, then one call of the batch's processor."""
        start_ms = timestamp_ms()
        finished: list[Finished] = []
        runnable: list[tuple[ClaimedJob, int, Any, int]] = []
        for job in claimed:
            refused: Exception | None = None
            enqueue_time_ms = 0
            payload: Any = None
            job_try = job.job_try
            if not job.data:
                log.warning("job.expired_before_start", job_id=job.job_id)
                refused = JobExecutionFailed("job expired")
            else:
                try:
                    function, args, kwargs, enqueue_try, enqueue_time_ms = deserialize_job_raw(
                        job.data, deserializer=self.job_deserializer
                    )
                except SerializationError as exc:
                    log.warning("job.not_deserializable", job_id=job.job_id, error=str(exc))
                    refused = exc
                else:
                    if function != JOB_FUNCTION or len(args) != 1 or kwargs:
                        refused = JobExecutionFailed(f"function {function!r} not found")
                    payload = args[0] if args else None
                    if enqueue_try and enqueue_try > job_try:
                        job_try = enqueue_try
                        await self.pool.setex(
                            retry_key_prefix + job.job_id, RETRY_KEY_TTL_S, str(job_try)
                        )
                    if refused is None and job_try > self.max_tries:
                        log.warning("job.max_tries_exceeded", job_id=job.job_id, tries=job_try)
                        refused = JobExecutionFailed(f"max {self.max_tries} retries exceeded")
            if refused is not None:
                self.jobs_failed += 1
                finished.append(
                    Finished(
                        job=job,
                        finish=Finish.FAILED,
                        result=refused,
                        enqueue_time_ms=enqueue_time_ms,
                        start_ms=start_ms,
                    )
                )
            else:
                runnable.append((job, job_try, payload, enqueue_time_ms))
        if not runnable:
            return finished
        processor: BatchProcessor = self.ctx["processor"]
        jobs = [(job.job_id, job_try, payload) for job, job_try, payload, _ in runnable]
        outcomes: Sequence[object]
        try:
            async with asyncio.timeout(self.job_timeout_s):
                outcomes = await processor.process_batch(jobs)
        except Exception as exc:
            # process_batch ends every job itself, so this is arq's own timeout or a
            # defect. Failing the jobs as arq would could leave their keys mid-run;
            # they run again instead, bounded by max_tries.
            log.exception("worker.batch_failed", jobs=len(jobs), error=type(exc).__name__)
            outcomes = [Retry(defer=BATCH_FAILED_RETRY_S)] * len(jobs)
        for (job, job_try, payload, enqueue_time_ms), outcome in zip(
            runnable, outcomes, strict=True
        ):
            common: dict[str, Any] = {
                "job": ClaimedJob(job.job_id, job.score, job.data, job_try),
                "function": JOB_FUNCTION,
                "args": (payload,),
                "enqueue_time_ms": enqueue_time_ms,
                "start_ms": start_ms,
            }
            if isinstance(outcome, Retry):
                self.jobs_retried += 1
                retry = Finished(finish=Finish.RETRY, defer_ms=outcome.defer_score, **common)
                finished.append(retry)
            elif isinstance(outcome, BaseException):
                self.jobs_failed += 1
                finished.append(Finished(finish=Finish.FAILED, result=outcome, **common))
            else:
                self.jobs_complete += 1
                finished.append(Finished(finish=Finish.SUCCEEDED, result=outcome, **common))
        return finished


class _ClaimRenewal:
    """Keeps one run's arq claims (one job's, or a batch's) alive until :meth:`stop`.

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
        "_job_ids",
        "_left",
        "_period_s",
        "_pool",
        "_renewing",
        "_ttl_ms",
        "_warned",
    )

    def __init__(self, pool: ArqRedis, job_ids: Sequence[str], claim_ttl_s: float) -> None:
        self._pool = pool
        self._job_ids = job_ids
        self._ttl_ms = int(claim_ttl_s * 1000)
        self._period_s = claim_ttl_s / 2
        self._renewing: asyncio.Task[None] | None = None
        self._warned = False
        self._left = self.MAX_RENEWALS
        self._handle = asyncio.get_running_loop().call_later(self._period_s, self._due)

    def _due(self) -> None:
        if self._left == 0:
            for job_id in self._job_ids:
                log.warning("job.claim_renewal_stopped", job_id=job_id)
            return
        self._left -= 1
        self._handle = asyncio.get_running_loop().call_later(self._period_s, self._due)
        # A renewal still waiting on Redis is not doubled; the next period tries again.
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._renew(), name="claim-renewal")

    async def _renew(self) -> None:
        try:
            async with self._pool.pipeline(transaction=False) as pipe:
                for job_id in self._job_ids:
                    pipe.pexpire(in_progress_key_prefix + job_id, self._ttl_ms)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            if not self._warned:
                self._warned = True
                error = f"{type(exc).__name__}: {exc}"
                for job_id in self._job_ids:
                    log.warning("job.claim_renewal_failed", job_id=job_id, error=error)

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
