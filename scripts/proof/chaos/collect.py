"""What ``gateway chaos`` reads back after the drain: every processed event, shipment,
dead letter and delivery, the queue's leftovers, and the failed runs the workers logged."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Final

import msgspec
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from scripts.harness.mock_downstream import Delivery, MockDownstreamClient
from scripts.proof.chaos.plan import QUEUE
from scripts.proof.chaos.report import (
    DeadLetterDoc,
    DeliveryRecord,
    ProcessedDoc,
    QueueState,
    ShipmentDoc,
)
from shared.queue import deserialize
from shared.storage.dead_letters import DeadLetterFilter, DeadLetters
from shared.storage.events import ProcessedEvents
from shared.storage.mongo import (
    SHIPMENTS,
    Document,
)

__all__ = ["Collector", "job_failures"]


class Collector:
    """Reads back, after the drain, everything the invariants judge."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        redis: Redis,
        mock: MockDownstreamClient,
        snapshots: list[list[Delivery]],
    ) -> None:
        self.db = db
        self.redis = redis
        self.mock = mock
        self.snapshots = snapshots

    async def processed(self) -> dict[str, ProcessedDoc]:
        found: dict[str, ProcessedDoc] = {}
        async for doc in ProcessedEvents(self.db).scan():
            found[doc.key] = ProcessedDoc(
                status=doc.status.value,
                attempts=doc.attempts,
                completed_at=None if doc.completed_at is None else doc.completed_at.timestamp(),
                attempt_log=tuple((a.at.timestamp(), a.code) for a in doc.attempt_log),
            )
        return found

    async def shipments(self) -> dict[str, ShipmentDoc]:
        found: dict[str, ShipmentDoc] = {}
        projection = {"shipment_id": 1, "status": 1, "last_event_id": 1, "history": 1}
        async for doc in self.db[SHIPMENTS].find({}, projection):
            found[str(doc["shipment_id"])] = ShipmentDoc(
                status=str(doc["status"]),
                last_event_id=str(doc["last_event_id"]),
                history=tuple(
                    (str(h["event_id"]), str(h["status"]), h["occurred_at"].timestamp())
                    for h in doc.get("history", ())
                ),
            )
        return found

    async def dead_letters(self) -> dict[str, DeadLetterDoc]:
        found: dict[str, DeadLetterDoc] = {}
        async for letter in DeadLetters(self.db).iterate(DeadLetterFilter()):
            found[letter.key] = DeadLetterDoc(
                reason=letter.reason,
                code=letter.error.code,
                attempts=tuple((a.at.timestamp(), a.code) for a in letter.attempts),
            )
        return found

    async def deliveries(self) -> list[DeliveryRecord]:
        final = (await self.mock.deliveries()).deliveries
        return [
            DeliveryRecord(key=d.webhook_id or "", status=d.status, received_at=d.received_at)
            for batch in [*self.snapshots, final]
            for d in batch
        ]

    async def queue_state(self) -> QueueState:
        depth = int(await self.redis.zcard(QUEUE))
        jobs = [k async for k in self.redis.scan_iter(match="arq:job:*", count=1000)]
        in_progress = [k async for k in self.redis.scan_iter(match="arq:in-progress:*", count=1000)]
        failures: dict[str, str] = {}
        results = [k async for k in self.redis.scan_iter(match="arq:result:*", count=1000)]
        for start in range(0, len(results), 500):
            chunk = results[start : start + 500]
            for key, raw in zip(chunk, await self.redis.mget(chunk), strict=True):
                if raw is None:
                    continue
                stored = deserialize(raw)
                if not stored.get("s", True):
                    name = key.decode().removeprefix("arq:result:")
                    failures[name] = str(stored.get("r"))[:200]
        return QueueState(
            depth=depth, jobs_left=len(jobs), in_progress=len(in_progress), arq_failures=failures
        )


_FAILURE_EVENTS: Final = frozenset({"job.retrying", "job.cancelled", "job.lease_lost"})


def job_failures(logs: list[Path]) -> dict[str, list[tuple[float, str]]]:
    """key → (time, code) of every failed or cancelled run in the workers' JSON logs."""
    found: dict[str, list[tuple[float, str]]] = {}
    for path in logs:
        for line in path.read_bytes().splitlines():
            try:
                entry = msgspec.json.decode(line)
            except msgspec.DecodeError:
                continue
            if not isinstance(entry, dict) or entry.get("event") not in _FAILURE_EVENTS:
                continue
            key, stamp = entry.get("idempotency_key"), entry.get("timestamp")
            if not isinstance(key, str) or not isinstance(stamp, str):
                continue
            at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            found.setdefault(key, []).append((at, str(entry.get("code") or entry["event"])))
    return found
