"""Fixtures for the worker and its users: the mock downstream, in-process
processors, pools of real ``gateway worker`` processes, and running jobs as
arq would.

Timings are small so retries, leases and shutdowns happen within seconds:
backoff base 0.05 s, job timeout 2 s (arq re-runs a SIGKILLed job after
12 s), lease 3 s.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import Job, JobResult
from arq.worker import Retry
from prometheus_client.parser import text_string_to_metric_families
from pymongo.asynchronous.database import AsyncDatabase

from gateway_worker.downstream import Downstream
from gateway_worker.jobs import EventProcessor
from gateway_worker.metrics import WorkerMetrics
from scripts.harness.mock_downstream import MockDownstreamClient, MockDownstreamProcess
from scripts.harness.services import free_port
from shared.contracts import QueuedEvent
from shared.queue import Enqueuer, deserialize, worker_health_key
from shared.settings import Settings
from shared.storage.dead_letters import DeadLetterDocument, DeadLetters
from shared.storage.events import ProcessedEvent, ProcessedEvents
from shared.storage.mongo import PROCESSED_EVENTS, Document
from shared.storage.shipments import Shipments
from tests.factories import DOWNSTREAM_SECRET, make_event, payload, settings_env

# Settings every worker test starts from; tests override what they exercise.
FAST: dict[str, Any] = {
    "max_attempts": 4,
    "backoff_base_s": 0.05,
    "backoff_multiplier": 2.0,
    "backoff_cap_s": 1.0,
    "job_timeout_s": 2.0,
    "lease_s": 3.0,
    "shutdown_grace_s": 2.0,
    "worker_poll_delay_s": 0.05,
    "worker_health_interval_s": 0.5,
    "worker_concurrency": 10,
    "worker_metrics_port": 0,
    "mongo_timeout_s": 1.0,
    "downstream_timeout_s": 1.0,
    "log_level": "INFO",
}


async def wait_until(
    check: Callable[[], Awaitable[Any]], *, timeout_s: float = 20.0, every_s: float = 0.1
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s (last: {result!r})")
        await asyncio.sleep(every_s)


@pytest.fixture
def worker_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings with the fast test timings; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        return make_settings(**{**FAST, **overrides})

    return make


@pytest.fixture
def pool_settings(
    worker_settings: Callable[..., Settings], downstream_url: str
) -> Callable[..., Settings]:
    """Fast worker settings with the mock downstream configured; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "downstream_url": downstream_url,
            "downstream_secret": DOWNSTREAM_SECRET,
        }
        return worker_settings(**{**values, **overrides})

    return make


@pytest.fixture(scope="session")
def mock_downstream_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One mock downstream for the session (signature checking on); yields its base URL."""
    log_path = tmp_path_factory.mktemp("downstream") / "mock.log"
    with log_path.open("wb") as log, MockDownstreamProcess(secret=DOWNSTREAM_SECRET, log=log) as m:
        yield m.base_url


@pytest.fixture
async def downstream(mock_downstream_process: str) -> AsyncIterator[MockDownstreamClient]:
    """The mock downstream, emptied and back to default rules for this test."""
    client = MockDownstreamClient(mock_downstream_process)
    await client.reset()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def downstream_url(mock_downstream_process: str) -> str:
    return f"{mock_downstream_process}/webhooks"


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def make_processor(
    mongo_db: AsyncDatabase[Document], http_client: httpx.AsyncClient
) -> Callable[..., EventProcessor]:
    """An in-process :class:`EventProcessor` on this test's database.

    ``downstream``: ``None`` (no delivery step), a URL (signed deliveries
    there), or any object with ``deliver``.
    """

    def make(
        settings: Settings,
        *,
        downstream: Any = None,
        db: AsyncDatabase[Document] | None = None,
        clock: Callable[[], datetime] | None = None,
        metrics: WorkerMetrics | None = None,
        seed: int = 7,
    ) -> EventProcessor:
        deliverer = downstream
        if isinstance(downstream, str):
            deliverer = Downstream(
                http_client,
                downstream,
                DOWNSTREAM_SECRET,
                timeout_s=settings.downstream_timeout_s,
            )
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        return EventProcessor(
            db=db if db is not None else mongo_db,
            settings=settings,
            worker_id="test-worker",
            metrics=metrics or WorkerMetrics(),
            downstream=deliverer,
            rng=random.Random(seed),
            **extra,
        )

    return make


@pytest.fixture
async def processor(
    worker_settings: Callable[..., Settings],
    make_processor: Callable[..., EventProcessor],
    downstream_url: str,
) -> EventProcessor:
    """A worker (in process) that gives up after two attempts and delivers to the mock."""
    return make_processor(worker_settings(max_attempts=2), downstream=downstream_url)


@dataclass
class WorkerProcess:
    """One ``gateway worker`` child process."""

    worker_id: str
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def log_lines(self) -> list[dict[str, Any]]:
        """The worker's JSON log lines so far."""
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                lines.append(msgspec.json.decode(raw))
            except msgspec.DecodeError:
                continue
        return lines


@dataclass
class WorkerPool:
    """Starts ``gateway worker`` processes for one test and stops them afterwards."""

    repo_root: Path
    log_dir: Path
    redis: ArqRedis
    workers: list[WorkerProcess] = field(default_factory=list)

    async def start(
        self, settings: Settings, count: int = 2, *, default_id: bool = False, **env: str
    ) -> list[WorkerProcess]:
        """Start ``count`` workers with ``settings`` and wait for their health keys.

        ``default_id`` leaves ``GATEWAY_WORKER_ID`` unset (id ``{hostname}-{pid}``).
        """
        started = [self._spawn(settings, env, default_id=default_id) for _ in range(count)]
        for worker in started:
            await self.wait_healthy(worker, settings)
        return started

    def _spawn(self, settings: Settings, env: dict[str, str], *, default_id: bool) -> WorkerProcess:
        worker_id = f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        metrics_port = free_port()
        variables = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        variables.update(settings_env(settings))
        variables.update(
            GATEWAY_WORKER_ID="" if default_id else worker_id,
            GATEWAY_WORKER_METRICS_PORT=str(metrics_port),
            PYTHONUNBUFFERED="1",
            **env,
        )
        log_path = self.log_dir / f"{worker_id}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(self.repo_root / ".venv" / "bin" / "gateway"), "worker"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=variables,
                cwd=self.repo_root,
            )
        if default_id:
            worker_id = f"{socket.gethostname()}-{process.pid}"
        worker = WorkerProcess(worker_id, process, log_path, metrics_port)
        self.workers.append(worker)
        return worker

    async def wait_healthy(self, worker: WorkerProcess, settings: Settings) -> None:
        key = worker_health_key(settings.queue_name, worker.worker_id)

        async def healthy() -> bool:
            if worker.process.poll() is not None:
                raise AssertionError(
                    f"worker {worker.worker_id} exited {worker.process.returncode}:\n"
                    + worker.log_path.read_text()[-4000:]
                )
            return bool(await self.redis.exists(key))

        await wait_until(healthy, timeout_s=30, every_s=0.05)

    async def wait_exit(self, worker: WorkerProcess, timeout_s: float) -> int:
        """Wait for ``worker`` to exit; its return code."""

        async def exited() -> bool:
            return worker.process.poll() is not None

        await wait_until(exited, timeout_s=timeout_s, every_s=0.05)
        return int(worker.process.returncode)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Samples summed over the live workers' ``/metrics``."""
        totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        async with httpx.AsyncClient(timeout=5) as client:
            for worker in self.workers:
                if worker.process.poll() is not None:
                    continue
                response = await client.get(f"http://127.0.0.1:{worker.metrics_port}/metrics")
                for family in text_string_to_metric_families(response.text):
                    for sample in family.samples:
                        labels = tuple(sorted(sample.labels.items()))
                        key = (sample.name, labels)
                        totals[key] = totals.get(key, 0.0) + sample.value
        return totals

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()


@pytest.fixture
async def worker_pool(
    redis: ArqRedis, repo_root: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[WorkerPool]:
    """Start real worker processes with ``await worker_pool.start(settings, n)``."""
    pool = WorkerPool(repo_root=repo_root, log_dir=tmp_path, redis=redis)
    try:
        yield pool
    finally:
        pool.stop_all()
        for worker in pool.workers:
            # Shown by pytest only when the test fails.
            print(f"--- {worker.worker_id} (exit {worker.process.returncode}) ---")
            print(worker.log_path.read_text()[-6000:])


async def statuses(db: AsyncDatabase[Document], keys: list[str]) -> dict[str, str]:
    """The ``processed_events`` status of each of ``keys`` that has a record."""
    found = db[PROCESSED_EVENTS].find({"_id": {"$in": keys}}, {"status": True})
    return {doc["_id"]: doc["status"] async for doc in found}


async def wait_for_status(
    db: AsyncDatabase[Document], keys: list[str], status: str, timeout_s: float = 30.0
) -> None:
    """Wait until every one of ``keys`` has a record in ``status``."""

    async def done() -> bool:
        current = await statuses(db, keys)
        return len(current) == len(keys) and set(current.values()) == {status}

    await wait_until(done, timeout_s=timeout_s)


@dataclass
class Workers:
    """Real worker processes and what they work with: queue, database and mock downstream."""

    pool: WorkerPool
    settings_for: Callable[..., Settings]
    enqueue: Callable[..., Awaitable[bool]]
    db: AsyncDatabase[Document]
    downstream: MockDownstreamClient
    redis: ArqRedis

    async def start(self, count: int = 2, **overrides: Any) -> tuple[Settings, list[WorkerProcess]]:
        """Start ``count`` workers with the pool settings and ``overrides``; both."""
        settings = self.settings_for(**overrides)
        return settings, await self.pool.start(settings, count)

    async def submit(
        self, *events: QueuedEvent, until: str | None = None, timeout_s: float = 30.0
    ) -> list[str]:
        """Enqueue ``events`` as the API does; wait for status ``until`` if given. Their keys."""
        for queued in events:
            assert await self.enqueue(queued)
        keys = [queued.idempotency_key for queued in events]
        if until is not None:
            await wait_for_status(self.db, keys, until, timeout_s=timeout_s)
        return keys

    async def delivery_in_flight(self) -> None:
        """Wait until the downstream has received a delivery."""

        async def received() -> bool:
            return bool((await self.downstream.deliveries()).counts)

        await wait_until(received, every_s=0.02)

    async def lease_owner(self, key: str) -> WorkerProcess:
        """The worker holding the lease of ``key`` (waiting for one to take it)."""

        async def owner() -> str | None:
            record = await ProcessedEvents(self.db).get(key)
            return None if record is None else record.lease_owner

        owner_id = await wait_until(owner, every_s=0.02)
        (worker,) = [w for w in self.pool.workers if w.worker_id == owner_id]
        return worker

    async def job_result(self, job_id: str) -> JobResult | None:
        """arq's stored result of ``job_id``, if it has finished."""
        return await Job(job_id, self.redis, _deserializer=deserialize).result_info()


@pytest.fixture
def workers(
    worker_pool: WorkerPool,
    pool_settings: Callable[..., Settings],
    enqueue: Callable[..., Awaitable[bool]],
    mongo_db: AsyncDatabase[Document],
    downstream: MockDownstreamClient,
    redis: ArqRedis,
) -> Workers:
    """Start real workers on this test's queue and database with ``await workers.start(n)``."""
    return Workers(worker_pool, pool_settings, enqueue, mongo_db, downstream, redis)


@pytest.fixture
async def enqueue(
    redis: ArqRedis, settings: Settings
) -> AsyncIterator[Callable[..., Awaitable[bool]]]:
    """Enqueue a :class:`QueuedEvent` the way the API does (job id = key unless given)."""
    enqueuer = Enqueuer(redis, settings.queue_name)

    async def put(queued: QueuedEvent, job_id: str | None = None) -> bool:
        return await enqueuer.enqueue(job_id or queued.idempotency_key, queued)

    try:
        yield put
    finally:
        await enqueuer.close()


async def run_job(processor: EventProcessor, job_id: str, job_payload: Any, limit: int = 20) -> str:
    """Run one job as arq would, again after each ``Retry`` (without waiting); its result."""
    for job_try in range(1, limit + 1):
        try:
            return str(await processor.process(job_id, job_try, job_payload))
        except Retry:
            continue
    raise AssertionError(f"job {job_id} still retrying after {limit} runs")


async def dead_letter_via_worker(processor: EventProcessor, queued: QueuedEvent) -> None:
    """Run ``queued`` through the worker until it ends; it must end dead-lettered."""
    result = await run_job(processor, queued.idempotency_key, payload(queued))
    assert result == "dead_lettered", result


async def outage_dead_letters(
    processor: EventProcessor, downstream: MockDownstreamClient, *event_ids: str
) -> list[str]:
    """Dead-letter each event by a downstream answering 503 until the test fixes it; the keys."""
    events = [make_event(e, shipment_id=f"shp_{e}") for e in event_ids]
    await downstream.control(always={q.idempotency_key: 503 for q in events})
    for queued in events:
        await dead_letter_via_worker(processor, queued)
    return [q.idempotency_key for q in events]


async def drain(redis: ArqRedis, queue_name: str, processor: EventProcessor) -> dict[str, str]:
    """Run every job in the queue in process (as one arq worker would); job id → result."""
    results: dict[str, str] = {}
    while job_ids := await redis.zrange(queue_name, 0, -1):
        for raw in job_ids:
            job_id = raw.decode()
            data = await redis.get(job_key_prefix + job_id)
            await redis.zrem(queue_name, job_id)
            await redis.delete(job_key_prefix + job_id)
            assert data is not None, f"job {job_id} is queued without its job key"
            job = deserialize(data)
            results[job_id] = await run_job(processor, job_id, job["a"][0])
    return results


# ---- what the worker stored ----------------------------------------------------------------------


async def stored_record(db: AsyncDatabase[Document], key: str) -> ProcessedEvent:
    """The ``processed_events`` record of ``key`` (it must exist)."""
    record = await ProcessedEvents(db).get(key)
    assert record is not None, f"no processed_events record for {key}"
    return record


async def stored_letter(db: AsyncDatabase[Document], key: str) -> DeadLetterDocument:
    """The dead letter of ``key`` (it must exist)."""
    letter = await DeadLetters(db).get(key)
    assert letter is not None, f"no dead letter for {key}"
    return letter


async def stored_shipment(
    db: AsyncDatabase[Document], shipment_id: str = "shp_1", source: str = "acme"
) -> Document:
    """The active shipment ``shipment_id`` of ``source`` (it must exist)."""
    shipment = await Shipments(db).get(source, shipment_id)
    assert shipment is not None, f"no active shipment {source}:{shipment_id}"
    return shipment


async def shipment_history(
    db: AsyncDatabase[Document], shipment_id: str = "shp_1", source: str = "acme"
) -> list[str]:
    """The event ids in the history of an active shipment (it must exist), in stored order."""
    shipment = await stored_shipment(db, shipment_id, source)
    return [entry["event_id"] for entry in shipment["history"]]
