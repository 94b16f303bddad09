"""The batch forms of the worker's three MongoDB steps do what the single-event methods do.

Each parity test prepares the same state under two keys (or shipments), runs the
single-event method on one and the batch method on the other, and compares
both the answers and the documents left behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from scripts.proof.probes import CommandCounter
from shared.contracts import CourierEvent, EventType, Shipment
from shared.storage.errors import StoreRejected, StoreUnavailable
from shared.storage.events import (
    AlreadyDone,
    Claim,
    Claimed,
    ClaimRequest,
    EventStatus,
    Leased,
    ProcessedEvents,
)
from shared.storage.mongo import PROCESSED_EVENTS, SHIPMENTS, Document, open_mongo
from shared.storage.shipments import (
    RECENT_APPLIES_LIMIT,
    Decision,
    Outcome,
    Shipments,
    decisions_of,
)
from tests.factories import T0, failure, make_event

NOW = T0 + timedelta(seconds=10)
JOB = "job-1"
"""The arq job id of the batch's requests (a case may prepare a lease under it)."""

Prepare = Callable[[ProcessedEvents, str], Awaitable[None]]


async def _lease(
    events: ProcessedEvents,
    key: str,
    *,
    job_id: str,
    token: str,
    lease_s: float = 30.0,
    at: datetime = T0,
) -> None:
    assert isinstance(
        await events.claim(
            key,
            source="acme",
            event_id="evt-first",
            job_id=job_id,
            owner=f"worker-{token}",
            token=token,
            now=at,
            lease_s=lease_s,
            body=b"first",
        ),
        Claimed,
    )


async def _take_over(events: ProcessedEvents, key: str) -> None:
    """Another run (job ``next``, token ``next``) claims ``key`` at ``NOW``."""
    await _lease(events, key, job_id="next", token="next", at=NOW)


async def _absent(events: ProcessedEvents, key: str) -> None:
    pass


async def _retrying(events: ProcessedEvents, key: str) -> None:
    await _lease(events, key, job_id="old", token="old")
    assert await events.record_failure(key, token="old", attempt=failure(1), now=T0)


async def _expired(events: ProcessedEvents, key: str) -> None:
    await _lease(events, key, job_id="old", token="old", lease_s=5.0)


async def _same_job(events: ProcessedEvents, key: str) -> None:
    await _lease(events, key, job_id=JOB, token="crashed")


async def _leased(events: ProcessedEvents, key: str) -> None:
    await _lease(events, key, job_id="other", token="other")


async def _succeeded(events: ProcessedEvents, key: str) -> None:
    await _lease(events, key, job_id="old", token="old")
    assert await events.mark_succeeded(key, token="old", now=T0, duration_ms=3)


async def _dead_lettered(events: ProcessedEvents, key: str) -> None:
    await _lease(events, key, job_id="old", token="old")
    assert await events.record_failure(key, token="old", attempt=failure(1), now=T0)
    await _lease(events, key, job_id="old2", token="old2")
    assert await events.mark_dead_lettered(key, token="old2", attempt=failure(2), now=T0)


async def _lease_without_expiry(events: ProcessedEvents, key: str) -> None:
    # Not a state the gateway writes: `processing` with no `lease_until` is refused by
    # every claim filter yet is not a live lease, so both forms end in claim's fallback.
    await events._collection.insert_one({"_id": key, "status": "processing"})


CLAIM_CASES: dict[str, tuple[Prepare, bool]] = {
    "absent": (_absent, False),
    "retrying": (_retrying, False),
    "processing_expired": (_expired, False),
    "processing_same_job_id": (_same_job, False),
    "leased_by_another": (_leased, False),
    "succeeded": (_succeeded, False),
    "dead_lettered": (_dead_lettered, False),
    "dead_lettered_replay": (_dead_lettered, True),
    "retrying_replay": (_retrying, True),
    "processing_without_lease_until": (_lease_without_expiry, False),
}


def _request(key: str, case: str, replay: bool) -> ClaimRequest:
    return ClaimRequest(
        key=key,
        source="acme",
        event_id=f"evt-{case}",
        job_id=JOB,
        token=f"t-{case}",
        replay=replay,
        body=b"second",
    )


async def _stored(db: AsyncDatabase[Document], collection: str, key: str) -> Document:
    document = await db[collection].find_one({"_id": key})
    assert document is not None
    del document["_id"]
    return document


@pytest.fixture
async def counted(
    mongo_url: str, mongo_db: AsyncDatabase[Document]
) -> AsyncIterator[tuple[AsyncDatabase[Document], CommandCounter]]:
    """This test's database through a client whose commands are recorded."""
    listener = CommandCounter()
    client: AsyncMongoClient[Document] = open_mongo(mongo_url, event_listeners=[listener])
    try:
        yield client[mongo_db.name], listener
    finally:
        await client.close()


# ---- claim_many ---------------------------------------------------------------------------------


async def test_a_mixed_batch_claims_each_key_exactly_as_claim_would(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    singles: dict[str, Claim] = {}
    for case, (prepare, replay) in CLAIM_CASES.items():
        await prepare(events, f"single:{case}")
        await prepare(events, f"bulk:{case}")
        request = _request(f"single:{case}", case, replay)
        singles[case] = await events.claim(
            request.key,
            source=request.source,
            event_id=request.event_id,
            job_id=request.job_id,
            owner="worker-b",
            token=request.token,
            now=NOW,
            lease_s=30.0,
            replay=request.replay,
            body=request.body,
        )
    requests = [_request(f"bulk:{case}", case, replay) for case, (_, replay) in CLAIM_CASES.items()]
    claims = await events.claim_many(requests, owner="worker-b", now=NOW, lease_s=30.0)
    assert dict(zip(CLAIM_CASES, claims, strict=True)) == singles
    for case in CLAIM_CASES:
        single = await mongo_db[PROCESSED_EVENTS].find_one({"_id": f"single:{case}"})
        bulk = await mongo_db[PROCESSED_EVENTS].find_one({"_id": f"bulk:{case}"})
        if single is None or bulk is None:
            assert (single, bulk) == (None, None), case
            continue
        assert {**single, "_id": None} == {**bulk, "_id": None}, case


async def test_claim_cases_answer_what_the_lease_rules_say(
    mongo_db: AsyncDatabase[Document],
) -> None:
    """The parity above must not hold only because both forms are wrong the same way."""
    events = ProcessedEvents(mongo_db)
    for case, (prepare, _) in CLAIM_CASES.items():
        await prepare(events, case)
    requests = [_request(case, case, replay) for case, (_, replay) in CLAIM_CASES.items()]
    claims = dict(
        zip(
            CLAIM_CASES,
            await events.claim_many(requests, owner="worker-b", now=NOW, lease_s=30.0),
            strict=True,
        )
    )
    assert claims == {
        "absent": Claimed(attempts=0, attempt_log=()),
        "retrying": Claimed(attempts=1, attempt_log=(failure(1),)),
        "processing_expired": Claimed(attempts=0, attempt_log=()),
        "processing_same_job_id": Claimed(attempts=0, attempt_log=()),
        "leased_by_another": Leased(lease_until=T0 + timedelta(seconds=30), owner="worker-other"),
        "succeeded": AlreadyDone(EventStatus.SUCCEEDED),
        "dead_lettered": AlreadyDone(EventStatus.DEAD_LETTERED),
        # A replay restarts the count; the log of the earlier attempts is kept.
        "dead_lettered_replay": Claimed(attempts=0, attempt_log=(failure(1), failure(2))),
        "retrying_replay": Claimed(attempts=1, attempt_log=(failure(1),)),
        "processing_without_lease_until": Leased(
            lease_until=NOW + timedelta(seconds=1), owner=None
        ),
    }
    claimed = await mongo_db[PROCESSED_EVENTS].find_one({"_id": "retrying"})
    assert claimed is not None
    assert (claimed["status"], claimed["lease_token"], claimed["lease_owner"]) == (
        "processing",
        "t-retrying",
        "worker-b",
    )
    assert claimed["body"] == b"first"
    assert claimed["lease_until"] == NOW + timedelta(seconds=30)


async def test_a_batch_of_new_keys_is_claimed_in_one_bulk_write_and_one_find(
    counted: tuple[AsyncDatabase[Document], CommandCounter],
) -> None:
    db, listener = counted
    events = ProcessedEvents(db)
    requests = [_request(f"k{n}", f"c{n}", False) for n in range(5)]
    listener.commands.clear()
    claims = await events.claim_many(requests, owner="w", now=NOW, lease_s=30.0)
    assert claims == [Claimed(attempts=0, attempt_log=())] * 5
    assert listener.commands == ["update", "find"]
    document = await _stored(db, PROCESSED_EVENTS, "k3")
    assert (document["event_id"], document["body"], document["first_seen_at"]) == (
        "evt-c3",
        b"second",
        NOW,
    )


async def test_a_refused_key_costs_no_round_trip_beyond_the_batch(
    counted: tuple[AsyncDatabase[Document], CommandCounter],
) -> None:
    db, listener = counted
    events = ProcessedEvents(db)
    await _leased(events, "leased")
    await _succeeded(events, "done")
    listener.commands.clear()
    requests = [_request(key, key, False) for key in ("leased", "done", "new")]
    claims = await events.claim_many(requests, owner="w", now=NOW, lease_s=30.0)
    assert [type(claim) for claim in claims] == [Leased, AlreadyDone, Claimed]
    assert listener.commands == ["update", "find"]


class _RacedEvents(ProcessedEvents):
    """Between the batch's write and its read, the key's other run records a failure."""

    async def _read_many(
        self, operation: str, keys: Sequence[str], fields: Document
    ) -> dict[str, Document]:
        assert await self.record_failure("raced", token="other", attempt=failure(1), now=NOW)
        return await super()._read_many(operation, keys, fields)


async def test_a_key_that_became_claimable_after_the_batch_write_is_claimed_alone(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = _RacedEvents(mongo_db)
    await _leased(events, "raced")
    requests = [_request("raced", "raced", False), _request("new", "new", False)]
    claims = await events.claim_many(requests, owner="w", now=NOW, lease_s=30.0)
    assert claims == [
        Claimed(attempts=1, attempt_log=(failure(1),)),
        Claimed(attempts=0, attempt_log=()),
    ]
    document = await _stored(mongo_db, PROCESSED_EVENTS, "raced")
    assert (document["status"], document["lease_token"]) == ("processing", "t-raced")


async def test_claim_many_refuses_a_repeated_key_before_writing(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    requests = [_request("k", "a", False), _request("other", "b", False), _request("k", "c", False)]
    with pytest.raises(ValueError, match="distinct"):
        await events.claim_many(requests, owner="w", now=NOW, lease_s=30.0)
    assert await mongo_db[PROCESSED_EVENTS].count_documents({}) == 0


async def test_empty_batches_make_no_round_trip(
    counted: tuple[AsyncDatabase[Document], CommandCounter],
) -> None:
    db, listener = counted
    listener.commands.clear()
    assert await ProcessedEvents(db).claim_many([], owner="w", now=NOW, lease_s=30.0) == []
    assert await ProcessedEvents(db).mark_succeeded_many([], now=NOW) == []
    assert await Shipments(db).apply_many([], now=NOW) == []
    assert listener.commands == []


# ---- mark_succeeded_many ------------------------------------------------------------------------


async def test_marking_a_batch_ends_each_held_lease_as_mark_succeeded_does(
    counted: tuple[AsyncDatabase[Document], CommandCounter],
) -> None:
    db, listener = counted
    events = ProcessedEvents(db)
    for key in ("single", "a", "b"):
        await _lease(events, key, job_id="job", token=f"t-{key}")
    assert await events.mark_succeeded("single", token="t-single", now=NOW, duration_ms=7)
    listener.commands.clear()
    ends = [("a", "t-a", 7), ("b", "t-b", None)]
    assert await events.mark_succeeded_many(ends, now=NOW) == [True, True]
    assert listener.commands == ["update"]
    single = await _stored(db, PROCESSED_EVENTS, "single")
    assert await _stored(db, PROCESSED_EVENTS, "a") == single
    b = await _stored(db, PROCESSED_EVENTS, "b")
    assert b["status"] == "succeeded"
    assert b["completed_at"] == NOW
    assert "success_duration_ms" not in b


async def test_one_lost_lease_among_several_is_the_only_false_and_is_left_alone(
    counted: tuple[AsyncDatabase[Document], CommandCounter],
) -> None:
    db, listener = counted
    events = ProcessedEvents(db)
    for key in ("a", "lost", "c", "retried"):
        await _lease(events, key, job_id=key, token=f"t-{key}", lease_s=5.0)
    # Both leases expired and another run took each over; one of those already failed.
    for key in ("lost", "retried"):
        await _take_over(events, key)
    assert await events.record_failure("retried", token="next", attempt=failure(1), now=NOW)
    taken_over = await _stored(db, PROCESSED_EVENTS, "lost")
    ends = [(key, f"t-{key}", 4) for key in ("a", "lost", "c", "retried")]
    # Microseconds: the state check must compare at BSON's millisecond precision.
    later = NOW + timedelta(seconds=1, microseconds=2345)
    listener.commands.clear()
    assert await events.mark_succeeded_many(ends, now=later) == [True, False, True, False]
    assert listener.commands == ["update", "find"]
    assert await _stored(db, PROCESSED_EVENTS, "lost") == taken_over
    assert (await _stored(db, PROCESSED_EVENTS, "retried"))["status"] == "retrying"
    assert (await _stored(db, PROCESSED_EVENTS, "c"))["status"] == "succeeded"


async def test_a_lost_lease_whose_successor_succeeded_at_the_same_instant_is_never_reported_held(
    mongo_db: AsyncDatabase[Document],
) -> None:
    """The one case the state read cannot tell apart: neither key is proven ended by us,
    so neither is reported held (a spurious `lease_lost` warning, not a false success)."""
    events = ProcessedEvents(mongo_db)
    await _lease(events, "ours", job_id="ours", token="t-ours")
    await _lease(events, "lost", job_id="lost", token="t-lost", lease_s=5.0)
    await _take_over(events, "lost")
    assert await events.mark_succeeded("lost", token="next", now=NOW)
    ends: list[tuple[str, str, int | None]] = [("ours", "t-ours", None), ("lost", "t-lost", None)]
    assert await events.mark_succeeded_many(ends, now=NOW) == [False, False]
    assert (await _stored(mongo_db, PROCESSED_EVENTS, "ours"))["status"] == "succeeded"


async def test_mark_succeeded_many_refuses_a_repeated_key_before_writing(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    await _lease(events, "k", job_id="k", token="t")
    with pytest.raises(ValueError, match="distinct"):
        await events.mark_succeeded_many([("k", "t", None), ("k", "t2", None)], now=NOW)
    assert (await _stored(mongo_db, PROCESSED_EVENTS, "k"))["status"] == "processing"


# ---- apply_many ---------------------------------------------------------------------------------

HOUR = timedelta(hours=1)


def _event(
    event_id: str,
    kind: EventType,
    hours: int,
    *,
    shipment_id: str = "shp_1",
    order_id: str = "ord_1",
    tracking: str = "1Z999",
) -> CourierEvent:
    event = make_event(
        event_id, kind, occurred_at=T0 + hours * HOUR, shipment_id=shipment_id, order_id=order_id
    ).event
    shipment = Shipment(id=shipment_id, order_id=order_id, tracking_number=tracking)
    return msgspec.structs.replace(event, shipment=shipment)


def _life(shipment_id: str) -> list[tuple[CourierEvent, Decision]]:
    """A batch's events of one shipment and what each does, in order."""
    return [
        (
            _event("e1", EventType.PICKED_UP, 1, shipment_id=shipment_id),
            Decision(Outcome.APPLIED, "picked_up"),
        ),
        (
            _event("e2", EventType.IN_TRANSIT, 3, shipment_id=shipment_id),
            Decision(Outcome.APPLIED, "in_transit"),
        ),
        (
            _event("e0", EventType.CREATED, 0, shipment_id=shipment_id),
            Decision(Outcome.RECORDED_STALE, "in_transit"),
        ),
        (
            _event("e2", EventType.IN_TRANSIT, 3, shipment_id=shipment_id),
            Decision(Outcome.ALREADY_APPLIED, "in_transit"),
        ),
        (
            _event("e3", EventType.OUT_FOR_DELIVERY, 4, shipment_id=shipment_id, order_id="ord_x"),
            Decision(Outcome.ORDER_MISMATCH, "in_transit"),
        ),
        (
            _event("e4", EventType.DELIVERED, 5, shipment_id=shipment_id),
            Decision(Outcome.APPLIED, "delivered"),
        ),
        (
            _event("e5", EventType.OUT_FOR_DELIVERY, 6, shipment_id=shipment_id),
            Decision(Outcome.INVALID_TRANSITION, "delivered"),
        ),
    ]


def _interleaved(
    *lives: list[tuple[CourierEvent, Decision]],
) -> list[tuple[CourierEvent, Decision]]:
    return [step for steps in zip(*lives, strict=True) for step in steps]


async def test_a_batch_gives_each_event_its_own_verdict_and_the_status_right_after_it(
    counted: tuple[AsyncDatabase[Document], CommandCounter],
) -> None:
    db, listener = counted
    steps = _interleaved(_life("shp_a"), _life("shp_b"))
    listener.commands.clear()
    decisions = await Shipments(db).apply_many([("acme", e) for e, _ in steps], now=NOW)
    assert decisions == [decision for _, decision in steps]
    assert listener.commands == ["update", "find"]


async def test_apply_many_leaves_the_documents_apply_event_leaves(
    mongo_db: AsyncDatabase[Document],
) -> None:
    shipments = Shipments(mongo_db)
    single = _interleaved(_life("single_a"), _life("single_b"))
    bulk = _interleaved(_life("bulk_a"), _life("bulk_b"))
    one_by_one = [await shipments.apply_event("acme", e, now=NOW) for e, _ in single]
    batched = await shipments.apply_many([("acme", e) for e, _ in bulk], now=NOW)
    assert batched == one_by_one
    for name in ("a", "b"):
        expected = await _stored(mongo_db, SHIPMENTS, f"acme:single_{name}")
        stored = await _stored(mongo_db, SHIPMENTS, f"acme:bulk_{name}")
        assert {**stored, "shipment_id": None} == {**expected, "shipment_id": None}
    # Each verdict of the batch is kept with the status it left, newest last.
    verdicts = [(v["event_id"], v["outcome"], v["status"]) for v in stored["recent_applies"]]
    assert verdicts == [(e.event_id, d.outcome, d.status) for e, d in _life("bulk_b")]
    assert stored["last_apply"] == stored["recent_applies"][-1]


async def test_the_verdict_list_is_bounded_and_an_event_whose_verdict_was_pushed_out_is_none(
    mongo_db: AsyncDatabase[Document],
) -> None:
    shipments = Shipments(mongo_db)
    events = [_event(f"e{n}", EventType.IN_TRANSIT, n) for n in range(RECENT_APPLIES_LIMIT + 2)]
    decisions = await shipments.apply_many([("acme", e) for e in events], now=NOW)
    assert decisions == [None, None] + [Decision(Outcome.APPLIED, "in_transit")] * (
        RECENT_APPLIES_LIMIT
    )
    document = await mongo_db[SHIPMENTS].find_one({"_id": "acme:shp_1"})
    assert document is not None
    assert len(document["recent_applies"]) == RECENT_APPLIES_LIMIT
    # What the caller then does with a None: apply it alone, which is idempotent.
    again = await shipments.apply_event("acme", events[0], now=NOW)
    assert again == Decision(Outcome.ALREADY_APPLIED, "in_transit")


async def test_a_bulk_stopped_by_a_duplicate_key_leaves_that_item_and_every_later_one_unknown(
    mongo_db: AsyncDatabase[Document],
) -> None:
    # A unique index of the test's own provokes the duplicate-key error an upsert
    # race gives, deterministically: the second item's insert collides with `other`.
    await mongo_db[SHIPMENTS].create_index("tracking_number", unique=True)
    await mongo_db[SHIPMENTS].insert_one({"_id": "acme:other", "tracking_number": "T-X"})
    shipments = Shipments(mongo_db)
    # e3 was applied once before: its old verdict must not stand in for the unrun one.
    e3 = _event("e3", EventType.IN_TRANSIT, 2, tracking="T-1")
    assert await shipments.apply_event("acme", e3, now=T0) == Decision(
        Outcome.APPLIED, "in_transit"
    )
    items = [
        ("acme", _event("e1", EventType.PICKED_UP, 1, tracking="T-1")),
        ("acme", _event("e2", EventType.PICKED_UP, 1, shipment_id="shp_2", tracking="T-X")),
        ("acme", e3),
    ]
    decisions = await shipments.apply_many(items, now=NOW)
    assert decisions == [Decision(Outcome.RECORDED_STALE, "in_transit"), None, None]
    stored = await _stored(mongo_db, SHIPMENTS, "acme:shp_1")
    assert [h["event_id"] for h in stored["history"]] == ["e3", "e1"]
    assert [v["event_id"] for v in stored["recent_applies"]] == ["e3", "e1"]
    assert await mongo_db[SHIPMENTS].find_one({"_id": "acme:shp_2"}) is None


def test_verdicts_are_matched_to_repeated_events_newest_last_and_never_guessed() -> None:
    applied = [("s1", "e1"), ("s2", "e1"), ("s1", "e1"), ("s1", "e2"), ("s3", "e9")]
    recent = {
        # s1's first apply of e1 was pushed out; the second one and e2's are there.
        "s1": [
            {"event_id": "e1", "outcome": "already_applied", "status": "picked_up"},
            {"event_id": "e2", "outcome": "applied", "status": "delivered"},
        ],
        "s2": [
            {"event_id": "e1", "outcome": "applied", "status": "created"},
            {"event_id": "e7", "outcome": "applied", "status": "picked_up"},
        ],
    }
    assert decisions_of(applied, recent) == [
        None,
        Decision(Outcome.APPLIED, "created"),
        Decision(Outcome.ALREADY_APPLIED, "picked_up"),
        Decision(Outcome.APPLIED, "delivered"),
        None,  # s3 has no document
    ]


async def test_the_shipment_read_leaves_out_the_verdicts(
    mongo_db: AsyncDatabase[Document],
) -> None:
    shipments = Shipments(mongo_db)
    await shipments.apply_many([("acme", _event("e1", EventType.PICKED_UP, 1))], now=NOW)
    document = await shipments.get("acme", "shp_1")
    assert document is not None
    assert document["status"] == "picked_up"
    assert "recent_applies" not in document
    assert "last_apply" not in document


# ---- failures -----------------------------------------------------------------------------------


async def _refusing(db: AsyncDatabase[Document], collection: str) -> None:
    """``collection`` with a validator that refuses every document the gateway writes."""
    schema = {"$jsonSchema": {"required": ["never_written"]}}
    await db.create_collection(collection, validator=schema)


async def test_a_write_error_other_than_a_duplicate_key_fails_the_claims_translated(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await _refusing(mongo_db, PROCESSED_EVENTS)
    with pytest.raises(StoreRejected, match=r"claim_many\[0\].*server code 121") as refused:
        await ProcessedEvents(mongo_db).claim_many(
            [_request("k", "k", False)], owner="w", now=NOW, lease_s=30.0
        )
    assert "second" not in str(refused.value)  # the body is not in the message


async def test_a_write_error_stops_the_applies_there_and_leaves_the_rest_unknown(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await _refusing(mongo_db, SHIPMENTS)
    items = [
        ("acme", _event("e1", EventType.PICKED_UP, 1)),
        ("acme", _event("e2", EventType.IN_TRANSIT, 2)),
    ]
    assert await Shipments(mongo_db).apply_many(items, now=NOW) == [None, None]
    # Applied alone, the refused event gets its own translated error.
    with pytest.raises(StoreRejected, match="server code 121"):
        await Shipments(mongo_db).apply_event(*items[0], now=NOW)


BATCHES: dict[str, Callable[[AsyncDatabase[Document], datetime], Awaitable[Any]]] = {
    "claim_many": lambda db, now: ProcessedEvents(db).claim_many(
        [_request("k", "k", False)], owner="w", now=now, lease_s=30.0
    ),
    "mark_succeeded_many": lambda db, now: ProcessedEvents(db).mark_succeeded_many(
        [("k", "t", None)], now=now
    ),
    "apply_many": lambda db, now: Shipments(db).apply_many(
        [("acme", _event("e1", EventType.PICKED_UP, 1))], now=now
    ),
}


@pytest.mark.parametrize("operation", BATCHES)
async def test_an_unreachable_store_is_a_translated_transient_error(
    unreachable_db: AsyncDatabase[Document], operation: str
) -> None:
    with pytest.raises(StoreUnavailable, match=operation):
        await BATCHES[operation](unreachable_db, NOW)
