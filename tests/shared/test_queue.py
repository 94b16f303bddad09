"""The Lua enqueue writes arq's own job format, atomically, in MessagePack."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import Job, JobStatus
from arq.worker import Worker, func
from redis.asyncio import Redis

from scripts.harness.services import RedisServer
from shared.contracts import CourierEvent, EventType, QueuedEvent, Shipment
from shared.queue import (
    JOB_EXPIRES_MS,
    JOB_FUNCTION,
    Enqueuer,
    QueueUnavailable,
    deserialize,
    open_queue_pool,
    serialize,
)
from shared.queue.enqueuer import enqueue_command
from shared.queue.format import ENQUEUE_SHA, JOB_PREFIX, RESULT_PREFIX, pack
from shared.settings import Settings


def queued(event_id: str = "evt_1") -> QueuedEvent:
    event = CourierEvent(
        event_id=event_id,
        event_type=EventType.PICKED_UP,
        occurred_at=datetime(2026, 11, 22, 10, 15, tzinfo=UTC),
        shipment=Shipment(id="shp_1", order_id="ord_1"),
    )
    return QueuedEvent(
        idempotency_key=f"acme:{event_id}",
        source="acme",
        event_id=event_id,
        body=msgspec.json.encode(event),
        request_id="req_1",
        received_at_ms=1,
    )


async def test_enqueued_job_is_run_by_a_real_arq_worker(
    redis: ArqRedis, settings: Settings
) -> None:
    seen: list[Any] = []

    async def process_event(ctx: dict[str, Any], payload: Any) -> str:
        seen.append(payload)
        return "ok"

    enqueuer = Enqueuer(redis, settings.queue_name)
    assert await enqueuer.enqueue("acme:evt_1", queued()) is True
    job = Job("acme:evt_1", redis, _queue_name=settings.queue_name, _deserializer=deserialize)
    assert await job.status() == JobStatus.queued

    worker = Worker(
        [func(process_event, name=JOB_FUNCTION)],
        redis_pool=redis,
        queue_name=settings.queue_name,
        burst=True,
        handle_signals=False,
        job_serializer=serialize,
        job_deserializer=deserialize,
        poll_delay=0.01,
    )
    await worker.main()
    assert len(seen) == 1
    assert seen[0]["idempotency_key"] == "acme:evt_1"
    # The body travels as MessagePack bin: the very bytes, untouched.
    assert seen[0]["body"] == queued().body
    assert msgspec.json.decode(seen[0]["body"])["shipment"]["id"] == "shp_1"
    assert await job.status() == JobStatus.complete
    assert await job.result(timeout=1) == "ok"


async def test_job_is_stored_as_msgpack_not_pickle(redis: ArqRedis, settings: Settings) -> None:
    await Enqueuer(redis, settings.queue_name).enqueue("acme:evt_1", queued())
    raw = await redis.get(job_key_prefix + "acme:evt_1")
    assert raw is not None
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(raw)  # noqa: S301 - proving the payload is not pickle
    decoded = deserialize(raw)
    assert decoded["f"] == JOB_FUNCTION
    assert decoded["a"][0]["source"] == "acme"


@pytest.mark.parametrize(
    ("queue_name", "job_id", "job", "now_ms"),
    [
        (b"arq:queue", b"acme:evt_1", b"\x85\xa1t\xc0", 1_764_600_000_123),
        (b"q%s", b"a%db\r\n", b"%b" * 40 + bytes(range(256)), 0),
        (b"", b"", b"", 7),
    ],
)
def test_enqueue_command_is_the_resp_hiredis_packs(
    queue_name: bytes, job_id: bytes, job: bytes, now_ms: int
) -> None:
    expected = pack(
        b"EVALSHA", ENQUEUE_SHA, b"3",
        JOB_PREFIX + job_id, RESULT_PREFIX + job_id, queue_name,
        job_id, job, JOB_EXPIRES_MS, now_ms,
    )  # fmt: skip
    assert enqueue_command(queue_name, job_id, job, now_ms) == expected


async def test_second_enqueue_of_a_known_id_is_refused(redis: ArqRedis, settings: Settings) -> None:
    enqueuer = Enqueuer(redis, settings.queue_name)
    assert await enqueuer.enqueue("acme:evt_1", queued()) is True
    assert await enqueuer.enqueue("acme:evt_1", queued()) is False
    assert await redis.zcard(settings.queue_name) == 1


async def test_concurrent_enqueues_of_one_id_store_exactly_one(
    redis: ArqRedis, settings: Settings
) -> None:
    enqueuer = Enqueuer(redis, settings.queue_name)
    results = await asyncio.gather(*(enqueuer.enqueue("acme:evt_1", queued()) for _ in range(100)))
    assert results.count(True) == 1
    assert await redis.zcard(settings.queue_name) == 1


async def test_enqueue_survives_a_flushed_script_cache(redis: ArqRedis, settings: Settings) -> None:
    enqueuer = Enqueuer(redis, settings.queue_name)
    await enqueuer.load_script()
    await redis.script_flush()
    assert await enqueuer.enqueue("acme:evt_2", queued("evt_2")) is True


async def test_enqueue_raises_queue_unavailable_when_redis_is_down(
    redis: ArqRedis, redis_server: RedisServer, settings: Settings
) -> None:
    enqueuer = Enqueuer(redis, settings.queue_name)
    redis_server.stop()
    with pytest.raises(QueueUnavailable):
        await enqueuer.enqueue("acme:evt_1", queued())


async def test_pipelined_replies_reach_their_own_callers(
    redis: ArqRedis, settings: Settings
) -> None:
    enqueuer = Enqueuer(redis, settings.queue_name)
    await enqueuer.enqueue("acme:evt_3", queued("evt_3"))
    ids = [f"evt_{n}" for n in range(200)]
    results = await asyncio.gather(*(enqueuer.enqueue(f"acme:{i}", queued(i)) for i in ids))
    assert [i for i, stored in zip(ids, results, strict=True) if not stored] == ["evt_3"]
    assert await redis.zcard(settings.queue_name) == 200
    await enqueuer.close()


async def test_enqueue_reconnects_after_a_redis_restart(
    redis: ArqRedis, redis_server: RedisServer, settings: Settings
) -> None:
    enqueuer = Enqueuer(redis, settings.queue_name)
    assert await enqueuer.enqueue("acme:evt_1", queued()) is True
    redis_server.restart()
    # A call written to the old connection before its close was noticed fails (the
    # API retries once); the next one opens a new connection.
    with contextlib.suppress(QueueUnavailable):
        await enqueuer.enqueue("acme:evt_2", queued("evt_2"))
    assert await enqueuer.enqueue("acme:evt_3", queued("evt_3")) is True
    await enqueuer.close()


async def test_hung_redis_fails_the_enqueue_within_its_deadline(
    redis: ArqRedis, redis_server: RedisServer, settings: Settings
) -> None:
    enqueuer = Enqueuer(redis, settings.queue_name, timeout_s=0.5)
    await enqueuer.load_script()
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(QueueUnavailable, match="did not answer"):
            async with asyncio.timeout(5):
                await enqueuer.enqueue("acme:evt_1", queued())
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    await enqueuer.close()


async def test_enqueue_authenticates_and_selects_the_database(
    tmp_path: Path, settings: Settings
) -> None:
    password = "test-only-" + uuid.uuid4().hex
    with RedisServer(tmp_path / "auth", extra_args=("--requirepass", password)) as server:
        url = f"redis://:{password}@127.0.0.1:{server.port}/3"
        pool = await open_queue_pool(url, settings.queue_name, retries=0)
        try:
            enqueuer = Enqueuer(pool, settings.queue_name)
            assert await enqueuer.enqueue("acme:evt_1", queued()) is True
            assert await pool.zcard(settings.queue_name) == 1  # the pool also uses db 3
            await enqueuer.close()
        finally:
            await pool.aclose()


async def test_wrong_password_is_queue_unavailable(tmp_path: Path, settings: Settings) -> None:
    with RedisServer(tmp_path / "auth", extra_args=("--requirepass", "test-only-right")) as server:
        client = Redis(host="127.0.0.1", port=server.port, password="test-only-wrong")
        enqueuer = Enqueuer(client, settings.queue_name)
        with pytest.raises(QueueUnavailable, match="AUTH"):
            await enqueuer.enqueue("acme:evt_1", queued())
        await enqueuer.close()
        await client.aclose()
