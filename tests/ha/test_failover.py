"""A Sentinel failover under load is followed by the API and the workers without a
restart, and nothing answered 202 is lost (docs/contract.md §4.5)."""

from __future__ import annotations

import asyncio
import time

import httpx
from arq.connections import ArqRedis
from pymongo.asynchronous.database import AsyncDatabase

from gateway_api.app import create_app
from scripts.harness.sentinel import SentinelTopology
from shared.settings import Settings
from shared.storage.mongo import PROCESSED_EVENTS, Document
from tests.api.harness import asgi_client, running
from tests.factories import event_body, new_event_id, reference_headers
from tests.plugins.worker import WorkerPool, wait_until

POSTERS = 3
PAUSE_S = 0.02
"""Between posts: a steady load the shared CI machine's workers keep up with."""


async def test_primary_killed_mid_load_loses_no_accepted_event(
    topology: SentinelTopology,
    ha_worker_settings: Settings,
    worker_pool: WorkerPool,
    ha_redis: ArqRedis,
    mongo_db: AsyncDatabase[Document],
) -> None:
    settings = ha_worker_settings
    workers = await worker_pool.start(settings, 2)
    answers: list[tuple[str, int, float]] = []
    stop = asyncio.Event()

    async def post_until_stopped(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            event_id = new_event_id()
            body = event_body(event_id)
            response = await client.post(
                "/v1/events/acme", content=body, headers=reference_headers(body)
            )
            answers.append((event_id, response.status_code, time.monotonic()))
            await asyncio.sleep(PAUSE_S if response.status_code == 202 else 0.05)

    app = create_app(settings)
    async with running(app), asgi_client(app) as client:
        posters = [asyncio.create_task(post_until_stopped(client)) for _ in range(POSTERS)]

        async def warmed_up() -> bool:
            return _count(answers, 202) >= 30

        await wait_until(warmed_up)
        killed = await asyncio.to_thread(topology.kill_primary)
        killed_at = time.monotonic()
        # With GATEWAY_ACK_REPLICAS=1 the promoted replica alone answers 503
        # (no replica to confirm) until the killed server rejoins as its replica.
        await asyncio.to_thread(topology.wait_for_failover, killed.port)
        await asyncio.to_thread(topology.rejoin, killed)

        async def accepted_since_kill() -> bool:
            return any(s == 202 and at > killed_at + 0.1 for _, s, at in answers)

        await wait_until(accepted_since_kill, timeout_s=30)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*posters)

    # Every new event is 202 or 503; never 200 "duplicate" for an event never acknowledged.
    assert {status for _, status, _ in answers} <= {202, 503}
    assert topology.primary() is not killed
    accepted = [f"acme:{event_id}" for event_id, status, _ in answers if status == 202]

    async def unprocessed() -> int:
        return len(accepted) - await mongo_db[PROCESSED_EVENTS].count_documents(
            {"_id": {"$in": accepted}, "status": "succeeded"}
        )

    async def all_processed() -> bool:
        return await unprocessed() == 0

    try:
        await wait_until(all_processed, timeout_s=90)
    except AssertionError:
        queued = await ha_redis.zcard(settings.queue_name)
        raise AssertionError(
            f"{await unprocessed()} of {len(accepted)} accepted events unprocessed, "
            f"{queued} still queued"
        ) from None
    assert all(worker.process.poll() is None for worker in workers)


def _count(answers: list[tuple[str, int, float]], status: int) -> int:
    return sum(1 for _, s, _ in answers if s == status)
