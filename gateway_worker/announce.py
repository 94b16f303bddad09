"""A worker's live status changes, PUBLISHed in batches (docs/contract.md §3.5).

Each job announces two changes on the happy path (``processing``, then
``succeeded``). One PUBLISH each was two Redis round trips per event and
66–89 µs of worker CPU each (uvloop; 12–13 µs each when 20 share a
pipeline, docs/profiles/worker-after.md); here :meth:`StatusPublisher.publish` only
queues the message, and one task sends what has queued, in order, as one
pipeline (one round trip) after at most ``linger_s``. Still one PUBLISH per
status change, still best effort: a batch Redis does not take is logged and
dropped — a lost notice only delays a page until its next poll.
"""

from __future__ import annotations

import asyncio
from typing import Final

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["LINGER_S", "MAX_PENDING", "StatusPublisher"]

LINGER_S: Final = 0.02
"""How long a change may wait for others to share its round trip."""
MAX_PENDING: Final = 10_000
"""Changes kept while Redis is slow or away; newer ones are dropped beyond it."""

log = structlog.get_logger("gateway_worker")


class StatusPublisher:
    """Queues status changes; :meth:`run`, a background task, PUBLISHes them in batches."""

    def __init__(self, redis: Redis, *, linger_s: float = LINGER_S) -> None:
        self._redis = redis
        self._linger_s = linger_s
        self._pending: list[tuple[str, bytes]] = []
        self._wake = asyncio.Event()
        self.dropped = 0

    async def publish(self, channel: str, message: bytes) -> None:
        """Queue ``message`` for ``channel``; never waits for Redis."""
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self._pending.append((channel, message))
        self._wake.set()

    async def run(self) -> None:
        """Send batches until cancelled; then :meth:`flush` sends what is left."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._linger_s)
            await self.flush()

    async def flush(self) -> None:
        """Send what is queued now, as one pipeline."""
        self._wake.clear()
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel, message in batch:
                    pipe.publish(channel, message)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("job.publish_failed", error=repr(exc), changes=len(batch))
