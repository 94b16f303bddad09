"""Session-wide real services and per-test isolation.

* ``redis_server``: a private ``redis-server`` on a free port, which tests may
  stop and restart; every test starts with it running and empty (``redis``).
* ``mongo_url``: the embedded MongoDB-wire server (mongoeco) in a child process,
  or a real MongoDB when ``GATEWAY_TEST_MONGO_URL`` is set. Each test gets its
  own database name, dropped afterwards, so tests never see each other's data.
* ``settings``: :class:`Settings` pointing at both, with per-run test secrets.
* ``unreachable_db``: a database behind a port nothing listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from scripts.harness.services import EmbeddedMongo, RedisServer, free_port
from shared.adapters.config import HexConfig, StandardConfig
from shared.queue import open_queue_pool
from shared.settings import Settings
from shared.storage.mongo import Document, open_mongo
from tests.factories import TEST_HEX_SECRET, TEST_SECRETS

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    external = os.environ.get("GATEWAY_TEST_MONGO_URL")
    if external:
        yield external
        return
    with EmbeddedMongo() as server:
        yield server.url


@pytest.fixture
def mongo_db_name(request: pytest.FixtureRequest) -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_settings(
    redis_server: RedisServer, mongo_url: str, mongo_db_name: str
) -> Callable[..., Settings]:
    """Build :class:`Settings` for this test's services; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_server.url,
            "mongo_url": mongo_url,
            "mongo_db": mongo_db_name,
            "queue_name": "gateway:test-events",
            "sources": {
                "acme": StandardConfig(secrets=TEST_SECRETS),
                "legacy": HexConfig(secrets=(TEST_HEX_SECRET,)),
            },
            "log_format": "json",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def redis(redis_server: RedisServer, settings: Settings) -> AsyncIterator[ArqRedis]:
    """A client to the test's Redis, started if a previous test stopped it, and emptied."""
    redis_server.start()
    pool = await open_queue_pool(redis_server.url, settings.queue_name, retries=0)
    await pool.flushall()
    try:
        yield pool
    finally:
        await pool.aclose()


@pytest.fixture
async def mongo_client(mongo_url: str) -> AsyncIterator[AsyncMongoClient[Document]]:
    client = open_mongo(mongo_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def mongo_db(
    mongo_client: AsyncMongoClient[Document], settings: Settings
) -> AsyncIterator[AsyncDatabase[Document]]:
    """This test's own database, dropped afterwards."""
    db = mongo_client[settings.mongo_db]
    try:
        yield db
    finally:
        await mongo_client.drop_database(settings.mongo_db)


@pytest.fixture
async def unreachable_db(mongo_db_name: str) -> AsyncIterator[AsyncDatabase[Document]]:
    """A database behind a port nothing listens on: every operation fails quickly."""
    client: AsyncMongoClient[Document] = open_mongo(
        f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", timeout_s=0.3
    )
    try:
        yield client[mongo_db_name]
    finally:
        await let_unreachable_mongo_monitor_sleep()
        await client.close()


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


async def snapshot(db: AsyncDatabase[Document], redis: ArqRedis) -> tuple[Any, Any]:
    """Every document of every collection and every Redis key with its value."""
    documents = {}
    for name in sorted(await db.list_collection_names()):
        documents[name] = [d async for d in db[name].find({}).sort("_id", 1)]
    keys = sorted(await redis.keys("*"))
    values = {key: await redis.dump(key) for key in keys}
    return documents, values


@contextlib.asynccontextmanager
async def unchanged(db: AsyncDatabase[Document], redis: ArqRedis) -> AsyncIterator[None]:
    """Assert that the ``async with`` block changes no document and no Redis key."""
    before = await snapshot(db, redis)
    yield
    assert await snapshot(db, redis) == before


async def let_unreachable_mongo_monitor_sleep() -> None:
    """Wait until PyMongo's monitor of an unreachable server sleeps between checks.

    PyMongo 4.20 leaks the socket of a monitor check cancelled mid-connect
    (``pool_shared`` closes it only on ``OSError``). Once no operation waits for
    a server, the monitor sleeps between checks, and closing the client then
    cancels nothing mid-connect. Without this, the leaked socket's
    ``ResourceWarning`` fails whichever later test happens to run the collector.
    """
    await asyncio.sleep(1.0)
