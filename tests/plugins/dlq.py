"""Fixtures for the dead-letter tool (service, CLI and admin API tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from arq.connections import ArqRedis
from pymongo.asynchronous.database import AsyncDatabase

from gateway_worker.jobs import EventProcessor
from scripts.harness.mock_downstream import MockDownstreamClient
from shared.dlq import DeadLetterService
from shared.settings import Settings
from shared.storage.mongo import Document
from tests.plugins.worker import drain, outage_dead_letters, stored_letter

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


@dataclass
class Outage:
    """Dead letters made by a real downstream outage, and the in-process worker replaying them."""

    processor: EventProcessor
    downstream: MockDownstreamClient
    redis: ArqRedis
    queue_name: str

    async def dead_letter(self, *event_ids: str, fixed: bool = False) -> list[str]:
        """Dead-letter each event by a downstream answering 503; the keys.

        ``fixed``: the downstream answers again afterwards (the cause is fixed).
        """
        keys = await outage_dead_letters(self.processor, self.downstream, *event_ids)
        if fixed:
            await self.fix()
        return keys

    async def fix(self) -> None:
        """The downstream answers every event again."""
        await self.downstream.control(always={})

    async def drain(self) -> dict[str, str]:
        """Run every queued job (replays) in process; job id → result."""
        return await drain(self.redis, self.queue_name, self.processor)

    async def queued(self) -> int:
        """How many jobs wait in the queue."""
        count: int = await self.redis.zcard(self.queue_name)
        return count

    async def delivered(self) -> dict[str, int]:
        """Successful deliveries per key."""
        return (await self.downstream.deliveries()).ok


@pytest.fixture
def outage(
    processor: EventProcessor,
    downstream: MockDownstreamClient,
    redis: ArqRedis,
    settings: Settings,
) -> Outage:
    """Dead-letter events by a downstream outage with ``await outage.dead_letter(...)``."""
    return Outage(processor, downstream, redis, settings.queue_name)


async def assert_discarded(db: AsyncDatabase[Document], key: str, reason: str, by: str) -> None:
    """The stored dead letter of ``key`` is discarded, by ``by``, for ``reason``."""
    letter = await stored_letter(db, key)
    assert (letter.status, letter.discard_reason, letter.discarded_by) == ("discarded", reason, by)
