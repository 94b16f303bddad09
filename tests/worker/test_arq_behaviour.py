"""Pins for the arq 0.28 behaviours of docs/contract.md §4.2 that the worker must absorb.

These run a real arq ``Worker`` in this process (burst mode) against the
test's Redis, configured by ``build_worker_settings``; the process-level ones
(SIGKILL, SIGTERM, Redis restart, per-worker health keys) are in
``test_worker_pool.py``.
"""

from __future__ import annotations

import pickle
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from arq.connections import ArqRedis
from arq.constants import result_key_prefix
from arq.jobs import Job, JobResult
from arq.worker import Worker
from pymongo.asynchronous.database import AsyncDatabase

from gateway_worker.jobs import EventProcessor
from gateway_worker.worker import (
    ARQ_MAX_TRIES_HEADROOM,
    build_worker_settings,
    on_startup,
)
from scripts.harness.tcp_proxy import OutageMode, TcpProxy
from shared.contracts import CourierEvent, QueuedEvent
from shared.queue import deserialize, serialize, worker_health_key
from shared.settings import Settings, SettingsError, load_settings
from shared.storage.mongo import Document, open_mongo
from tests.factories import make_event
from tests.plugins.worker import stored_letter, stored_record

MakeProcessor = Callable[..., EventProcessor]
BurstOne = Callable[..., Awaitable[tuple[QueuedEvent, Worker, JobResult]]]

# arq 0.28's Worker.close() calls redis-py's deprecated close(); not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")


class FailsWith:
    """Deliverer raising ``exc`` on every call."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def deliver(self, queued: QueuedEvent, status: str, event: CourierEvent) -> None:
        raise self.exc


class HangsOnce:
    """Deliverer that hangs on its first call and answers at once afterwards."""

    def __init__(self) -> None:
        self.calls = 0

    async def deliver(self, queued: QueuedEvent, status: str, event: CourierEvent) -> None:
        import asyncio

        self.calls += 1
        if self.calls == 1:
            await asyncio.Event().wait()


async def run_burst(
    settings: Settings, processor: EventProcessor | None = None, **overrides: Any
) -> Worker:
    """Run an arq worker built from ``settings`` until the queue is empty."""

    async def startup(ctx: dict[Any, Any]) -> None:
        await on_startup(ctx)
        if processor is not None:
            ctx["processor"] = processor

    options = {**build_worker_settings(settings, worker_id="burst"), "on_startup": startup}
    options.update(burst=True, handle_signals=False, **overrides)
    worker = Worker(**options)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


def test_worker_settings_absorb_each_arq_behaviour(
    worker_settings: Callable[..., Settings],
) -> None:
    settings = worker_settings(max_attempts=6, shutdown_grace_s=7.5)
    options = build_worker_settings(settings, worker_id="w-1")
    # max_tries is checked before our code runs: ours must decide first.
    assert options["max_tries"] == 6 + ARQ_MAX_TRIES_HEADROOM
    # A Redis restart must not end the worker.
    assert options["redis_settings"].retry is not None
    assert options["redis_settings"].conn_retries > 0
    # Never pickle.
    assert (options["job_serializer"], options["job_deserializer"]) == (serialize, deserialize)
    # One health key per worker, refreshed often.
    assert options["health_check_key"] == worker_health_key(settings.queue_name, "w-1")
    assert options["health_check_interval"] == settings.worker_health_interval_s
    assert options["job_completion_wait"] == 7.5
    assert options["job_timeout"] == settings.job_timeout_s
    assert options["keep_result"] == settings.keep_result_s


async def result_of(redis: ArqRedis, job_id: str) -> JobResult:
    """arq's stored result of the job (it must have one)."""
    info = await Job(job_id, redis, _deserializer=deserialize).result_info()
    assert info is not None
    return info


def test_a_lease_not_longer_than_the_job_timeout_is_refused(
    worker_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(SettingsError, match="GATEWAY_LEASE_S"):
        build_worker_settings(worker_settings(job_timeout_s=10.0, lease_s=10.0))


def test_environment_with_a_lease_not_longer_than_the_job_timeout_names_the_variable() -> None:
    environ = {"GATEWAY_JOB_TIMEOUT_S": "30", "GATEWAY_LEASE_S": "20"}
    with pytest.raises(SettingsError, match=r"^GATEWAY_LEASE_S: must exceed"):
        load_settings(environ)


@pytest.fixture
def burst_one(
    redis: ArqRedis,
    enqueue: Callable[..., Awaitable[bool]],
    worker_settings: Callable[..., Settings],
    make_processor: MakeProcessor,
) -> BurstOne:
    """Enqueue one new event and run :func:`run_burst` on the fast settings and ``overrides``.

    ``deliverer``: a processor delivering with it (``None``: the worker's own
    startup builds the processor); ``db``: that processor's database;
    ``arq_job_timeout``: arq's own job timeout instead of the settings'.
    Returns the event, the worker and arq's result of the job.
    """

    async def run(
        deliverer: Any = None,
        *,
        db: AsyncDatabase[Document] | None = None,
        arq_job_timeout: float | None = None,
        **overrides: Any,
    ) -> tuple[QueuedEvent, Worker, JobResult]:
        settings = worker_settings(**overrides)
        processor = None
        if deliverer is not None:
            processor = make_processor(settings, downstream=deliverer, db=db)
        arq_options = {} if arq_job_timeout is None else {"job_timeout": arq_job_timeout}
        queued = make_event()
        assert await enqueue(queued)
        worker = await run_burst(settings, processor, **arq_options)
        return queued, worker, await result_of(redis, queued.idempotency_key)

    return run


async def assert_rerun_once_and_succeeded_uncounted(
    db: AsyncDatabase[Document], queued: QueuedEvent, worker: Worker, info: JobResult, calls: int
) -> None:
    """The job was cut off once, re-run, and succeeded: no arq failure, no attempt counted."""
    assert (worker.jobs_failed, worker.jobs_complete, calls) == (0, 1, 2)
    assert (info.success, info.result) == (True, "succeeded")
    record = await stored_record(db, queued.idempotency_key)
    assert (record.status, record.attempts) == ("succeeded", 0)


async def test_unknown_exceptions_become_retries_then_a_dead_letter_never_an_arq_failure(
    burst_one: BurstOne, mongo_db: AsyncDatabase[Document]
) -> None:
    deliverer = FailsWith(RuntimeError("bug"))
    queued, worker, info = await burst_one(deliverer, max_attempts=3, backoff_base_s=0.01)
    assert (worker.jobs_failed, worker.jobs_retried, worker.jobs_complete) == (0, 2, 1)
    assert (info.success, info.result, info.job_try) == (True, "dead_lettered", 3)
    assert (await stored_letter(mongo_db, queued.idempotency_key)).reason == "retries_exhausted"


async def test_job_cut_off_by_arqs_own_timeout_is_rerun_not_failed_and_not_counted(
    burst_one: BurstOne, mongo_db: AsyncDatabase[Document]
) -> None:
    # Our own deadline (80 % of 5 s) is far away; arq's job_timeout of 0.3 s
    # cancels the job, which arq alone would record as a failed job.
    deliverer = HangsOnce()
    queued, worker, info = await burst_one(
        deliverer, arq_job_timeout=0.3, job_timeout_s=5.0, lease_s=6.0
    )
    await assert_rerun_once_and_succeeded_uncounted(mongo_db, queued, worker, info, deliverer.calls)


async def test_job_results_are_msgpack_not_pickle(burst_one: BurstOne, redis: ArqRedis) -> None:
    queued, _, _ = await burst_one()
    raw = await redis.get(result_key_prefix + queued.idempotency_key)
    assert raw is not None
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(raw)  # noqa: S301 - proving the result is not pickle
    assert deserialize(raw)["r"] == "succeeded"


class CutsMongoThenFails:
    """Deliverer whose first call blackholes MongoDB and fails (transient), then succeeds.

    The run then records that failure through a network that answers nothing,
    and arq's own ``job_timeout`` cuts the recording off.
    """

    def __init__(self, proxy: TcpProxy, outage_s: float) -> None:
        self.proxy = proxy
        self.outage_s = outage_s
        self.calls = 0

    async def deliver(self, queued: QueuedEvent, status: str, event: CourierEvent) -> None:
        import asyncio

        self.calls += 1
        if self.calls == 1:
            self.proxy.go_down(OutageMode.BLACKHOLE)
            asyncio.get_running_loop().call_later(self.outage_s, self.proxy.go_up)
            raise ConnectionError("downstream reset the connection")


async def test_job_cut_off_by_arqs_timeout_while_recording_a_failure_is_rerun_not_failed(
    burst_one: BurstOne, mongo_db: AsyncDatabase[Document], mongo_url: str
) -> None:
    # Found by `gateway chaos` (blackhole MongoDB outage): a failure being
    # recorded when arq's job_timeout fired ended the job as arq's TimeoutError
    # failure, leaving the key `processing` for good — accepted, never terminal.
    target = urlsplit(mongo_url)
    proxy = await TcpProxy(target.port or 27017, target_host=target.hostname or "").start()
    client = open_mongo(f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true", timeout_s=2.0)
    try:
        deliverer = CutsMongoThenFails(proxy, outage_s=1.5)
        queued, worker, info = await burst_one(
            deliverer,
            db=client[mongo_db.name],
            arq_job_timeout=0.5,
            job_timeout_s=5.0,
            lease_s=6.0,
        )
    finally:
        await client.close()
        await proxy.stop()
    await assert_rerun_once_and_succeeded_uncounted(mongo_db, queued, worker, info, deliverer.calls)
