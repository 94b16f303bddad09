"""``EventProcessor.process_batch``: jobs run together end exactly as they end one by one.

Real MongoDB wire server; the same jobs run as one batch on one database and one
at a time through :meth:`EventProcessor.process` on another, then every outcome
and every stored document is compared.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from arq.worker import Retry
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from gateway_worker.errors import ErrorCode, TransientError
from gateway_worker.jobs import EventProcessor, JobResult, utc_now
from scripts.proof.probes import CommandCounter
from shared.contracts import CourierEvent, EventType, QueuedEvent
from shared.settings import Settings
from shared.storage.events import ProcessedEvents
from shared.storage.mongo import (
    DEAD_LETTER_EVENTS,
    PROCESSED_EVENTS,
    SHIPMENTS,
    Document,
    open_mongo,
)
from tests.factories import T0, make_event, payload
from tests.worker.test_processor import Blocking

MakeProcessor = Callable[..., EventProcessor]
Job = tuple[str, int, Any]


class Recording:
    """A deliverer that records what it delivered and fails for some event ids."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.failing = failing
        self.delivered: list[str] = []

    async def deliver(self, queued: QueuedEvent, status: str, event: CourierEvent) -> None:
        if event.event_id in self.failing:
            raise TransientError(ErrorCode.DOWNSTREAM_UNREACHABLE, "connection refused")
        self.delivered.append(f"{queued.idempotency_key}:{status}")


@pytest.fixture
async def second_db(
    mongo_client: AsyncMongoClient[Document], mongo_db: AsyncDatabase[Document]
) -> AsyncIterator[AsyncDatabase[Document]]:
    db = mongo_client[f"{mongo_db.name}_one"]
    yield db
    await mongo_client.drop_database(db.name)


def hour(n: float) -> timedelta:
    return timedelta(hours=n)


def mixed_jobs() -> list[Job]:
    """Every way a job can end, with several events of one shipment among them."""
    events = [
        make_event("a1", EventType.CREATED, shipment_id="shp_a"),
        make_event("a2", EventType.IN_TRANSIT, occurred_at=T0 + hour(1), shipment_id="shp_a"),
        make_event("a3", EventType.DELIVERED, occurred_at=T0 + hour(2), shipment_id="shp_a"),
        # terminal, newer, another status: invalid_transition
        make_event("a4", EventType.IN_TRANSIT, occurred_at=T0 + hour(3), shipment_id="shp_a"),
        # older than the newest: recorded_stale, still a success
        make_event("a0", EventType.PICKED_UP, occurred_at=T0 + hour(0.5), shipment_id="shp_a"),
        make_event("b1", EventType.CREATED, shipment_id="shp_b"),
        make_event(
            "b2",
            EventType.IN_TRANSIT,
            occurred_at=T0 + hour(1),
            shipment_id="shp_b",
            order_id="ord_other",
        ),
        make_event("c1", EventType.CREATED, shipment_id="shp_c"),  # downstream fails: retried
        make_event("done", EventType.CREATED, shipment_id="shp_d"),  # finished before
        make_event("held", EventType.CREATED, shipment_id="shp_e"),  # another job's lease
    ]
    jobs: list[Job] = [(q.idempotency_key, 1, payload(q)) for q in events]
    jobs.append(("not-a-queued-event", 1, {"nonsense": True}))
    jobs.append(("a1-again", 1, payload(events[0])))  # a second job of a key in the batch
    return jobs


async def prepare(processor: EventProcessor, db: AsyncDatabase[Document]) -> None:
    done = make_event("done", EventType.CREATED, shipment_id="shp_d")
    assert await processor.process("earlier", 1, payload(done)) == JobResult.SUCCEEDED
    await ProcessedEvents(db).claim(
        "acme:held",
        source="acme",
        event_id="held",
        job_id="other-job",
        owner="other-worker",
        token="other",
        now=utc_now(),
        lease_s=3600,
    )


def kind(outcome: JobResult | Retry) -> str:
    if isinstance(outcome, Retry):
        return "deferred" if outcome.defer_score else "retry now"
    return outcome.value


async def stored(db: AsyncDatabase[Document]) -> dict[str, Any]:
    events = {
        d["_id"]: (d["status"], d.get("attempts", 0), (d.get("last_error") or {}).get("code"))
        async for d in db[PROCESSED_EVENTS].find({})
    }
    shipments = {
        d["_id"]: (d["status"], [h["event_id"] for h in d["history"]], d["last_event_id"])
        async for d in db[SHIPMENTS].find({})
    }
    letters = {
        d["_id"]: d["error"]["code"] async for d in db[DEAD_LETTER_EVENTS].find({}, {"error": True})
    }
    return {"events": events, "shipments": shipments, "letters": letters}


async def test_a_mixed_batch_ends_every_job_as_running_them_one_by_one_does(
    worker_settings: Callable[..., Settings],
    make_processor: MakeProcessor,
    mongo_db: AsyncDatabase[Document],
    second_db: AsyncDatabase[Document],
) -> None:
    settings = worker_settings(max_attempts=3)
    batch_deliveries = Recording(frozenset({"c1"}))
    one_deliveries = Recording(frozenset({"c1"}))
    batched = make_processor(settings, downstream=batch_deliveries, db=mongo_db)
    one_by_one = make_processor(settings, downstream=one_deliveries, db=second_db)
    await prepare(batched, mongo_db)
    await prepare(one_by_one, second_db)
    batch_deliveries.delivered.clear()
    one_deliveries.delivered.clear()
    jobs = mixed_jobs()

    outcomes = await batched.process_batch(jobs)
    alone: list[JobResult | Retry] = []
    for job_id, job_try, job in jobs:
        try:
            alone.append(await one_by_one.process(job_id, job_try, job))
        except Retry as retry:
            alone.append(retry)

    assert [kind(o) for o in outcomes] == [kind(o) for o in alone]
    assert [kind(o) for o in outcomes] == [
        *["succeeded"] * 3,
        "dead_lettered",  # a4: invalid_transition
        "succeeded",  # a0: recorded_stale
        "succeeded",
        "dead_lettered",  # b2: order_mismatch
        "deferred",  # c1: downstream unreachable, attempt counted, backoff
        "duplicate",
        "deferred",  # held: behind the other job's lease
        "dead_lettered",  # undecodable
        "duplicate",  # a1-again
    ]
    in_batch, alone_stored = await stored(mongo_db), await stored(second_db)
    assert in_batch == alone_stored
    assert in_batch["events"]["acme:c1"] == ("retrying", 1, "downstream_unreachable")
    assert in_batch["events"]["acme:held"][0] == "processing"
    assert in_batch["shipments"]["acme:shp_a"] == ("delivered", ["a1", "a2", "a3", "a0"], "a3")
    assert in_batch["letters"] == {
        "acme:a4": "invalid_transition",
        "acme:b2": "order_mismatch",
        "not-a-queued-event": "undecodable_payload",
    }
    assert sorted(batch_deliveries.delivered) == sorted(one_deliveries.delivered)
    assert "acme:a0:delivered" in batch_deliveries.delivered  # the status after a stale event


async def test_a_batch_of_happy_events_costs_five_mongodb_round_trips(
    worker_settings: Callable[..., Settings],
    make_processor: MakeProcessor,
    mongo_url: str,
    mongo_db: AsyncDatabase[Document],
) -> None:
    listener = CommandCounter()
    client: AsyncMongoClient[Document] = open_mongo(mongo_url, event_listeners=[listener])
    try:
        processor = make_processor(worker_settings(), db=client[mongo_db.name])
        events = [
            make_event(f"e{i}", EventType.CREATED, shipment_id=f"shp_{i % 3}") for i in range(10)
        ]
        outcomes = await processor.process_batch(
            [(q.idempotency_key, 1, payload(q)) for q in events]
        )
        commands = list(listener.commands)
    finally:
        await client.close()
    assert outcomes == [JobResult.SUCCEEDED] * 10
    # claim: bulk write + read; shipments: ordered bulk write + read; marks: bulk write
    assert commands == ["update", "find", "update", "find", "update"]
    statuses = {d["_id"]: d["status"] async for d in mongo_db[PROCESSED_EVENTS].find({})}
    assert statuses == {q.idempotency_key: "succeeded" for q in events}


async def test_a_cancelled_batch_gives_every_lease_back_and_runs_again_uncounted(
    worker_settings: Callable[..., Settings],
    make_processor: MakeProcessor,
    mongo_db: AsyncDatabase[Document],
) -> None:
    blocking = Blocking()
    processor = make_processor(
        worker_settings(job_timeout_s=30.0, lease_s=40.0), downstream=blocking
    )
    events = [make_event(f"e{i}", shipment_id=f"shp_{i}") for i in range(3)]
    running = asyncio.create_task(
        processor.process_batch([(q.idempotency_key, 1, payload(q)) for q in events])
    )
    await asyncio.wait_for(blocking.entered.wait(), 10)

    running.cancel()
    outcomes = await running

    assert all(isinstance(o, Retry) and not o.defer_score for o in outcomes)
    records = {d["_id"]: d async for d in mongo_db[PROCESSED_EVENTS].find({})}
    assert {k: (r["status"], r["attempts"]) for k, r in records.items()} == {
        q.idempotency_key: ("retrying", 0) for q in events
    }
    assert not any("lease_token" in r for r in records.values())


async def test_steps_past_the_deadline_fail_every_unfinished_job_of_the_batch_once(
    worker_settings: Callable[..., Settings],
    make_processor: MakeProcessor,
    mongo_db: AsyncDatabase[Document],
) -> None:
    blocking = Blocking()
    settings = worker_settings(job_timeout_s=1.0, lease_s=5.0)
    processor = make_processor(settings, downstream=blocking)
    events = [make_event(f"e{i}", shipment_id=f"shp_{i}") for i in range(3)]

    outcomes = await processor.process_batch([(q.idempotency_key, 1, payload(q)) for q in events])

    assert all(isinstance(o, Retry) and o.defer_score for o in outcomes)
    records = {d["_id"]: d async for d in mongo_db[PROCESSED_EVENTS].find({})}
    assert {
        k: (r["status"], r["attempts"], r["last_error"]["code"]) for k, r in records.items()
    } == {q.idempotency_key: ("retrying", 1, "job_timeout") for q in events}
