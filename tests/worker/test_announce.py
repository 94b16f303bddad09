"""The worker's batched status publisher, against the test's real Redis."""

from __future__ import annotations

import asyncio

from arq.connections import ArqRedis
from redis.asyncio import Redis
from structlog.testing import capture_logs

from gateway_worker.announce import StatusPublisher
from scripts.harness.services import free_port


async def test_changes_queued_together_reach_subscribers_in_order(redis: ArqRedis) -> None:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("q:status")
    publisher = StatusPublisher(redis, linger_s=0.01)
    publisher.start()
    try:
        for n in range(5):
            await publisher.publish("q:status", f"change {n}".encode())
        seen: list[bytes] = []
        async with asyncio.timeout(10):
            while len(seen) < 5:
                message = await pubsub.get_message(timeout=1)
                if message is not None:
                    seen.append(message["data"])
    finally:
        await publisher.stop()
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert seen == [f"change {n}".encode() for n in range(5)]


async def test_stopping_sends_what_is_still_queued(redis: ArqRedis) -> None:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("q:status")
    # A linger far beyond the test: only stop() can send it.
    publisher = StatusPublisher(redis, linger_s=3600)
    publisher.start()
    try:
        await publisher.publish("q:status", b"last words")
        await publisher.stop()
        async with asyncio.timeout(10):
            message = None
            while message is None:
                message = await pubsub.get_message(timeout=1)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert message["data"] == b"last words"


async def test_a_batch_redis_does_not_take_is_logged_and_dropped_never_raised() -> None:
    gone = Redis(port=free_port(), socket_connect_timeout=0.5)
    publisher = StatusPublisher(gone, linger_s=0)
    publisher.start()
    try:
        with capture_logs() as logs:
            await publisher.publish("q:status", b"lost")
            await publisher.stop()
    finally:
        await gone.aclose()
    assert [(e["event"], e["changes"]) for e in logs] == [("job.publish_failed", 1)]
