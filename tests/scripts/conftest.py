"""Fixtures and helpers for the dead-letter tool's tests (service, CLI, admin API).

The worker fixtures (mock downstream, in-process processors, worker
processes) come from ``tests/worker/conftest.py``; they are imported here so
tests under ``tests/scripts`` can use them, and the service and admin tests
import what they need from this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.worker import Retry
from pymongo.asynchronous.database import AsyncDatabase

from gateway_worker.jobs import EventProcessor
from shared.contracts import EventType, QueuedEvent
from shared.dlq import DeadLetterService
from shared.queue import deserialize
from shared.settings import Settings
from shared.storage.dead_letters import DeadLetterReason, DeadLetters
from shared.storage.events import AttemptRecord
from shared.storage.mongo import Document
from tests.worker.conftest import (
    T0,
    downstream,
    downstream_url,
    http_client,
    make_event,
    make_processor,
    mock_downstream_process,
    payload,
    settings_env,
    worker_pool,
    worker_settings,
)

__all__ = [
    "T0",
    "dead_letter_via_worker",
    "downstream",
    "downstream_url",
    "drain",
    "http_client",
    "make_event",
    "make_processor",
    "make_service",
    "mock_downstream_process",
    "payload",
    "run_job",
    "service",
    "settings_env",
    "snapshot",
    "worker_pool",
    "worker_settings",
    "write_letter",
]


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


async def write_letter(
    db: AsyncDatabase[Document],
    event_id: str,
    *,
    at: datetime = T0,
    source: str = "acme",
    code: str = "downstream_unavailable",
    reason: DeadLetterReason = DeadLetterReason.RETRIES_EXHAUSTED,
    event_type: EventType = EventType.PICKED_UP,
) -> str:
    """Write a dead letter with the worker's own storage call; its key."""
    queued = make_event(event_id, event_type, source=source)
    attempt = AttemptRecord(
        attempt=1, at=at, code=code, message=f"{code} happened", transient=True, duration_ms=3
    )
    await DeadLetters(db).dead_letter(
        queued,
        shipment_id=queued.event.shipment.id,
        event_type=event_type.value,
        reason=reason,
        code=code,
        message=f"{code} happened",
        attempts=[attempt],
        now=at,
    )
    return queued.idempotency_key


async def snapshot(db: AsyncDatabase[Document], redis: ArqRedis) -> tuple[Any, Any]:
    """Every document of every collection and every Redis key with its value."""
    documents = {}
    for name in sorted(await db.list_collection_names()):
        documents[name] = [d async for d in db[name].find({}).sort("_id", 1)]
    keys = sorted(await redis.keys("*"))
    values = {key: await redis.dump(key) for key in keys}
    return documents, values


MakeService = Callable[..., DeadLetterService]


@pytest.fixture
async def make_service(
    mongo_db: AsyncDatabase[Document], redis: ArqRedis, settings: Settings
) -> AsyncIterator[MakeService]:
    """Build dead-letter services on this test's database and queue (closed afterwards)."""
    services: list[DeadLetterService] = []

    def make(**options: Any) -> DeadLetterService:
        services.append(DeadLetterService(mongo_db, redis, settings.queue_name, **options))
        return services[-1]

    try:
        yield make
    finally:
        for made in services:
            await made.aclose()


@pytest.fixture
def service(make_service: MakeService) -> DeadLetterService:
    """The dead-letter service on this test's database and queue."""
    return make_service()
