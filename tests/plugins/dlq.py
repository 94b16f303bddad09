"""Fixtures for the dead-letter tool (service, CLI and admin API tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from pymongo.asynchronous.database import AsyncDatabase

from shared.dlq import DeadLetterService
from shared.settings import Settings
from shared.storage.mongo import Document

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
