"""Fixtures for the worker tests: events, the mock downstream, in-process
processors, and pools of real ``gateway worker`` processes.

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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from arq.connections import ArqRedis
from prometheus_client.parser import text_string_to_metric_families
from pymongo.asynchronous.database import AsyncDatabase

from gateway_worker.downstream import Downstream
from gateway_worker.jobs import EventProcessor
from gateway_worker.metrics import WorkerMetrics
from scripts.mock_downstream import MockDownstreamClient, MockDownstreamProcess
from scripts.services import free_port
from scripts.tcp_proxy import TcpProxy as TcpProxy  # re-exported for the outage tests
from shared.contracts import CourierEvent, EventType, QueuedEvent, ReplayRef, Shipment
from shared.queue import Enqueuer, worker_health_key
from shared.settings import Settings
from shared.signing import generate_secret
from shared.storage.mongo import Document

DOWNSTREAM_SECRET = generate_secret()
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)

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


def make_event(
    event_id: str = "evt_1",
    event_type: EventType = EventType.PICKED_UP,
    *,
    occurred_at: datetime = T0,
    shipment_id: str = "shp_1",
    order_id: str = "ord_1",
    source: str = "acme",
    replay: ReplayRef | None = None,
) -> QueuedEvent:
    """A :class:`QueuedEvent` as the API would enqueue it."""
    event = CourierEvent(
        event_id=event_id,
        event_type=event_type,
        occurred_at=occurred_at,
        shipment=Shipment(id=shipment_id, order_id=order_id, tracking_number="1Z999"),
    )
    return QueuedEvent(
        idempotency_key=f"{source}:{event_id}",
        source=source,
        event_id=event_id,
        body=msgspec.json.encode(event),
        request_id=f"req_{event_id}",
        received_at_ms=int(time.time() * 1000),
        replay=replay,
    )


def payload(queued: QueuedEvent) -> Any:
    """The job argument exactly as arq hands it to the job (MessagePack round trip)."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(queued))


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


class Clock:
    """A settable clock for lease arithmetic without sleeping."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def worker_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings with the fast test timings; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        return make_settings(**{**FAST, **overrides})

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


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``GATEWAY_*`` variables that ``load_settings`` turns back into ``settings``."""
    env: dict[str, str] = {}
    for name in Settings.__struct_fields__:
        value = getattr(settings, name)
        if value is None:
            continue
        variable = "GATEWAY_" + name.upper()
        if name == "sources":
            env[variable] = msgspec.json.encode(value).decode()
        else:
            env[variable] = str(value)
    return env


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
