"""The worker's batched status publisher, against the test's real Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from arq.connections import ArqRedis
from redis.asyncio import Redis
from structlog.testing import capture_logs

from gateway_worker.announce import StatusPublisher
from scripts.harness.services import free_port


@contextlib.asynccontextmanager
async def running(publisher: StatusPublisher) -> AsyncIterator[StatusPublisher]:
    """``publisher`` as the worker runs it: its task, cancelled then flushed at the end."""
    task = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await publisher.flush()


async def received(redis: ArqRedis, count: int, send: AsyncIterator[None]) -> list[bytes]:
    """The first ``count`` messages on ``q:status`` while ``send`` runs to its end."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("q:status")
    seen: list[bytes] = []
    try:
        async for _ in send:
            pass
        async with asyncio.timeout(10):
            while len(seen) < count:
                message = await pubsub.get_message(timeout=1)
                if message is not None:
                    seen.append(message["data"])
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    return seen


async def test_changes_queued_together_reach_subscribers_in_order(redis: ArqRedis) -> None:
    async def send() -> AsyncIterator[None]:
        async with running(StatusPublisher(redis, linger_s=0.01)) as publisher:
            for n in range(5):
                await publisher.publish("q:status", f"change {n}".encode())
            yield

    assert await received(redis, 5, send()) == [f"change {n}".encode() for n in range(5)]


async def test_stopping_sends_what_is_still_queued(redis: ArqRedis) -> None:
    async def send() -> AsyncIterator[None]:
        # A linger far beyond the test: only the final flush can send it.
        async with running(StatusPublisher(redis, linger_s=3600)) as publisher:
            await publisher.publish("q:status", b"last words")
        yield

    assert await received(redis, 1, send()) == [b"last words"]


async def test_a_batch_redis_does_not_take_is_logged_and_dropped_never_raised() -> None:
    gone = Redis(port=free_port(), socket_connect_timeout=0.5)
    try:
        with capture_logs() as logs:
            async with running(StatusPublisher(gone, linger_s=0)) as publisher:
                await publisher.publish("q:status", b"lost")
    finally:
        await gone.aclose()
    assert [(e["event"], e["changes"]) for e in logs] == [("job.publish_failed", 1)]
