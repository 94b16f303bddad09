"""Watching a running gateway from outside: how full its queue is, and what became of
each accepted event.

The one observer of the proof tooling and the demo: ``gateway loadtest``,
``gateway chaos`` and ``gateway demo`` wait for the same drain
(:meth:`Observer.drain`) and read outcomes with the same batched queries.
It reads Redis (the arq queue's sorted set) and MongoDB (``processed_events``,
``shipments``) only; it never changes anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, Final

from msgspec import Struct
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.storage.mongo import PROCESSED_EVENTS, SHIPMENTS

__all__ = ["TERMINAL", "Drain", "KeyState", "Observer"]

TERMINAL: Final = ("succeeded", "dead_lettered")
"""``processed_events`` statuses after which nothing happens to a key any more."""
_CHUNK: Final = 500


class KeyState(Struct, frozen=True, kw_only=True):
    """An accepted key's ``processed_events`` document (``None`` status: no document)."""

    status: str | None
    attempts: int = 0


class Drain(Struct, frozen=True, kw_only=True):
    """How waiting for the queue to empty went."""

    drained: bool
    seconds: float
    queue_left: int
    non_terminal_left: int


class Observer:
    """Read-only view of one gateway's queue (``queue_name`` in ``redis``) and database."""

    def __init__(self, db: AsyncDatabase[Any], redis: Redis, queue_name: str) -> None:
        self.db = db
        self.redis = redis
        self.queue_name = queue_name

    async def queue_depth(self) -> int:
        """Jobs in the queue: waiting, deferred or running (arq keeps each until it ends)."""
        return int(await self.redis.zcard(self.queue_name))

    async def terminal_count(self, keys: Sequence[str]) -> int:
        """How many of ``keys`` are :data:`TERMINAL`."""
        total = 0
        for chunk in _chunks(keys):
            total += await self.db[PROCESSED_EVENTS].count_documents(
                {"_id": {"$in": chunk}, "status": {"$in": list(TERMINAL)}}
            )
        return total

    async def states(self, keys: Sequence[str]) -> dict[str, KeyState]:
        """The status and attempt count of each of ``keys`` that has a document."""
        found: dict[str, KeyState] = {}
        for chunk in _chunks(keys):
            cursor = self.db[PROCESSED_EVENTS].find(
                {"_id": {"$in": chunk}}, {"status": True, "attempts": True}
            )
            async for document in cursor:
                found[str(document["_id"])] = KeyState(
                    status=document.get("status"), attempts=int(document.get("attempts", 0))
                )
        return found

    async def histories(self, shipments: Sequence[str]) -> dict[str, list[str]]:
        """The event ids in each shipment's history (``shipments`` ``_id`` values)."""
        found: dict[str, list[str]] = {}
        for chunk in _chunks(shipments):
            cursor = self.db[SHIPMENTS].find({"_id": {"$in": chunk}}, {"history": True})
            async for document in cursor:
                found[str(document["_id"])] = [
                    str(entry.get("event_id")) for entry in document.get("history", [])
                ]
        return found

    async def drain(
        self,
        keys: Collection[str],
        *,
        timeout_s: float,
        wait_for_queue: bool = True,
        settle_checks: int | None = None,
        poll_s: float = 0.5,
        progress: Callable[[str], None] | None = None,
        progress_every_s: float = 10.0,
    ) -> Drain:
        """Wait until every one of ``keys`` is terminal (and the queue is empty), or time out.

        With ``wait_for_queue`` the queue must be empty too: nothing is then
        waiting, deferred or running, so nothing can change any more.
        ``settle_checks`` ends the wait early once the queue has been empty for
        that many checks in a row even if some keys are not terminal (a key
        lost by the gateway would otherwise hold the wait until the timeout;
        the caller's checks then name it). ``drained`` is true when the
        queue ended empty and every key terminal, or the queue settled. A
        Redis or MongoDB error counts as a check that did not pass.
        """
        started = time.monotonic()
        wanted = sorted(keys)
        depth, non_terminal, empty_checks = 0, len(wanted), 0
        last_progress = started
        while True:
            try:
                depth = await self.queue_depth() if wait_for_queue else 0
                empty_checks = empty_checks + 1 if depth == 0 else 0
                if depth == 0:
                    non_terminal = len(wanted) - await self.terminal_count(wanted)
            except (RedisError, PyMongoError) as exc:
                # Right after a fault a store can still be reconnecting: not yet.
                empty_checks = 0
                if progress is not None:
                    progress(f"draining: cannot read the queue or the outcome yet ({exc})")
            else:
                settled = settle_checks is not None and empty_checks >= settle_checks
                if depth == 0 and (non_terminal == 0 or settled):
                    break
            now = time.monotonic()
            if now - started >= timeout_s:
                break
            if progress is not None and now - last_progress >= progress_every_s:
                progress(f"draining: {depth} jobs queued, {non_terminal} keys not terminal")
                last_progress = now
            await asyncio.sleep(poll_s)
        settled = settle_checks is not None and empty_checks >= settle_checks
        return Drain(
            drained=depth == 0 and (non_terminal == 0 or settled),
            seconds=round(time.monotonic() - started, 1),
            queue_left=depth,
            non_terminal_left=non_terminal,
        )


def _chunks(items: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield list(items[start : start + _CHUNK])
