"""A Sentinel topology (primary, replica, three Sentinels) shared by the HA tests.

Each test starts from a healthy topology: both servers running, the replica in
sync. Which server is primary changes when a test fails over; tests ask the
topology, never assume.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from arq.connections import ArqRedis

from scripts.harness.sentinel import SentinelTopology
from shared.queue import client_for, close_client
from shared.settings import Settings
from tests.plugins.worker import FAST


@pytest.fixture(scope="session")
def sentinel_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    with SentinelTopology(tmp_path_factory.mktemp("sentinel")) as topology:
        yield topology


@pytest.fixture
def topology(sentinel_topology: SentinelTopology) -> SentinelTopology:
    """The shared topology, healed by the previous test's end: both servers up, in sync."""
    for server in sentinel_topology.servers:
        if server.process is None or server.process.poll() is not None:
            sentinel_topology.rejoin(server)
    sentinel_topology.wait_for_replicas(1)
    return sentinel_topology


@pytest.fixture
def ha_settings(
    make_settings: Callable[..., Settings], topology: SentinelTopology
) -> Callable[..., Settings]:
    """Settings that find Redis through the topology's Sentinels; a queue of this test's own."""

    queue_name = f"gateway:ha-{uuid.uuid4().hex[:8]}"

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": topology.url,
            "redis_sentinels": topology.sentinels_env,
            "queue_name": queue_name,
            **overrides,
        }
        return make_settings(**values)

    return make


@pytest.fixture
async def ha_redis(ha_settings: Callable[..., Settings]) -> AsyncIterator[ArqRedis]:
    client = client_for(ha_settings(), timeout_s=2)
    try:
        yield client
    finally:
        await close_client(client)


@pytest.fixture
def ha_worker_settings(ha_settings: Callable[..., Settings]) -> Settings:
    """Workers' test timings (a SIGKILLed job re-runs after 15 s), ``GATEWAY_ACK_REPLICAS=1``."""
    return ha_settings(**{**FAST, "job_timeout_s": 5.0, "lease_s": 8.0}, ack_replicas=1)


@pytest.fixture
def redis(ha_redis: ArqRedis) -> ArqRedis:
    """The topology's queue: fixtures built on ``redis`` (``worker_pool``) use it here."""
    return ha_redis
