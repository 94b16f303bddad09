"""With GATEWAY_ACK_REPLICAS=n a job acts only once its arq claim is on n replicas
(gateway_worker/claim.py, docs/contract.md §4.5)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, result_key_prefix
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from gateway_worker.claim import ARQ_CLAIM, claim_replicated
from scripts.harness.sentinel import SentinelTopology
from shared.queue import Enqueuer, deserialize
from shared.settings import Settings
from shared.storage.mongo import PROCESSED_EVENTS, Document
from tests.factories import new_event_id
from tests.plugins.worker import WorkerPool, wait_until
from tests.shared.test_queue import queued

CLAIM_TTL_S = 60.0


@pytest.fixture
async def replica_client(topology: SentinelTopology) -> AsyncIterator[Redis]:
    client = Redis(port=topology.replica().port, socket_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


async def arq_claims(redis: ArqRedis, job_id: str) -> None:
    """What arq's ``start_jobs`` writes when it claims ``job_id``."""
    await redis.psetex(in_progress_key_prefix + job_id, int(CLAIM_TTL_S * 1000), ARQ_CLAIM)


async def confirm(redis: ArqRedis, job_id: str, *, patience_s: float = 5.0) -> bool:
    return await claim_replicated(
        redis, job_id, replicas=1, claim_ttl_s=CLAIM_TTL_S, patience_s=patience_s
    )


async def test_a_confirmed_claim_is_this_runs_and_on_the_replica(
    ha_redis: ArqRedis, replica_client: Redis
) -> None:
    job_id = f"acme:{new_event_id()}"
    await arq_claims(ha_redis, job_id)

    assert await confirm(ha_redis, job_id) is True

    key = in_progress_key_prefix + job_id
    on_primary = await ha_redis.get(key)
    assert on_primary not in (None, ARQ_CLAIM.encode())
    assert await replica_client.get(key) == on_primary
    assert await ha_redis.pttl(key) > 0


async def test_a_claim_no_replica_confirms_is_not_acted_on_and_stays_held(
    topology: SentinelTopology, ha_redis: ArqRedis
) -> None:
    job_id = f"acme:{new_event_id()}"
    replica = topology.replica()
    replica.stop()
    try:
        await arq_claims(ha_redis, job_id)
        assert await confirm(ha_redis, job_id, patience_s=0) is False
        # Held until it expires, so no other worker claims the job meanwhile.
        assert await ha_redis.pttl(in_progress_key_prefix + job_id) > 0
    finally:
        topology.rejoin(replica)
        topology.wait_for_replicas(1)


async def test_a_claim_lost_or_held_by_another_run_is_left_alone(ha_redis: ArqRedis) -> None:
    lost = f"acme:{new_event_id()}"
    assert await confirm(ha_redis, lost) is False
    assert await ha_redis.exists(in_progress_key_prefix + lost) == 0

    taken = f"acme:{new_event_id()}"
    await arq_claims(ha_redis, taken)
    assert await confirm(ha_redis, taken) is True
    winner = await ha_redis.get(in_progress_key_prefix + taken)
    # A second run of the same job (its claim lost in a failover and made again).
    assert await confirm(ha_redis, taken) is False
    assert await ha_redis.get(in_progress_key_prefix + taken) == winner


async def test_a_worker_runs_a_job_only_once_a_replica_holds_its_claim(
    topology: SentinelTopology,
    ha_worker_settings: Settings,
    worker_pool: WorkerPool,
    mongo_db: AsyncDatabase[Document],
) -> None:
    settings, ha_redis = ha_worker_settings, worker_pool.redis
    event = queued(new_event_id())
    key = event.idempotency_key
    replica = topology.replica()
    replica.stop()
    try:
        # Accepted before the replica went away; the primary alone holds it now.
        enqueuer = Enqueuer(ha_redis, settings.queue_name, sentinels=topology.sentinels)
        try:
            assert await enqueuer.enqueue(key, event) is True
        finally:
            await enqueuer.close()
        (worker,) = await worker_pool.start(settings, 1)

        async def processed() -> int:
            return await mongo_db[PROCESSED_EVENTS].count_documents({"_id": key})

        async def waiting_or_acted() -> bool:
            waiting = any(
                line.get("event") == "job.claim_waiting" and line.get("job_id") == key
                for line in worker.log_lines()
            )
            return waiting or await processed() > 0

        await wait_until(waiting_or_acted, timeout_s=30)
        assert await processed() == 0, "the job acted before a replica held its claim"

        topology.rejoin(replica)
        topology.wait_for_replicas(1)

        async def result() -> bytes | None:
            found: bytes | None = await ha_redis.get(result_key_prefix + key)
            return found

        stored = deserialize(await wait_until(result, timeout_s=60))
        assert stored["s"] is True, stored
        assert stored["r"] == "succeeded"
        document = await mongo_db[PROCESSED_EVENTS].find_one({"_id": key})
        assert document is not None
        assert (document["status"], document["attempts"]) == ("succeeded", 0)
    finally:
        if replica.process is None or replica.process.poll() is not None:
            topology.rejoin(replica)
