"""GATEWAY_ACK_REPLICAS: 202 only once a replica holds the job (docs/contract.md §4.5)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from arq.connections import ArqRedis

from gateway_api.app import create_app
from scripts.harness.sentinel import SentinelTopology
from shared.queue import Enqueuer, QueueUnavailable
from shared.settings import Settings
from tests.api.expect import assert_problem
from tests.api.harness import asgi_client, running
from tests.factories import event_body, new_event_id, reference_headers
from tests.shared.test_queue import queued


async def post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/v1/events/acme", content=body, headers=reference_headers(body))


async def test_503_while_the_replica_is_stopped_then_202_and_a_truthful_duplicate(
    topology: SentinelTopology, ha_settings: Callable[..., Settings], ha_redis: ArqRedis
) -> None:
    app = create_app(ha_settings(ack_replicas=1))
    async with running(app), asgi_client(app) as client:
        first = await post(client, event_body(new_event_id()))
        assert first.status_code == 202, first.text

        replica = topology.replica()
        replica.stop()
        try:
            pending_id = new_event_id()
            refused = await post(client, event_body(pending_id))
            assert_problem(refused, 503, "queue_unavailable")
        finally:
            topology.rejoin(replica)
            topology.wait_for_replicas(1)

        # The refused enqueue may have reached the primary: now that a replica
        # confirms, the retry answers "duplicate" truthfully, or stores it anew.
        retried = await post(client, event_body(pending_id))
        assert retried.status_code in (200, 202), retried.text
        if retried.status_code == 200:
            assert retried.json()["status"] == "duplicate"
        assert await ha_redis.exists(f"arq:job:acme:{pending_id}") == 1

        fresh = await post(client, event_body(new_event_id()))
        assert fresh.status_code == 202, fresh.text


async def test_enqueuer_counts_the_replicas_that_acknowledged(
    topology: SentinelTopology, ha_settings: Callable[..., Settings], ha_redis: ArqRedis
) -> None:
    settings = ha_settings()
    wants_two = Enqueuer(
        ha_redis,
        settings.queue_name,
        ack_replicas=2,
        timeout_s=0.4,
        sentinels=topology.sentinels,
    )
    wants_one = Enqueuer(
        ha_redis, settings.queue_name, ack_replicas=1, sentinels=topology.sentinels
    )
    try:
        with pytest.raises(QueueUnavailable, match="1 of 2 replicas acknowledged"):
            await wants_two.enqueue("job-two", queued("evt_two"))
        # Stored on the primary and on its one replica: a duplicate, confirmed.
        assert await wants_one.enqueue("job-two", queued("evt_two")) is False
        assert await wants_one.enqueue("job-one", queued("evt_one")) is True
    finally:
        await wants_two.close()
        await wants_one.close()
