"""processed_events leases, dead-letter documents and index setup, against the wire server."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from shared.storage.dead_letters import DeadLetterReason, DeadLetters, ReplayOutcome
from shared.storage.events import (
    AlreadyDone,
    AttemptRecord,
    Claimed,
    EventStatus,
    Leased,
    ProcessedEvents,
)
from shared.storage.indexes import IndexAction, ensure_indexes, index_specs
from shared.storage.mongo import DEAD_LETTER_EVENTS, PROCESSED_EVENTS, Document
from tests.factories import T0

KEY = "acme:evt_1"


async def claim(
    events: ProcessedEvents,
    job_id: str = KEY,
    token: str = "t1",  # noqa: S107 - a lease token
    **kw: Any,
) -> Any:
    options: dict[str, Any] = {"now": T0, "lease_s": 30.0, "replay": False}
    options.update(kw)
    return await events.claim(
        KEY,
        source="acme",
        event_id="evt_1",
        job_id=job_id,
        owner=f"worker-{token}",
        token=token,
        **options,
    )


def failure(attempt: int, at_s: float = 0) -> AttemptRecord:
    return AttemptRecord(
        attempt=attempt,
        at=T0 + timedelta(seconds=at_s),
        code="downstream_unavailable",
        message="downstream answered 503",
        transient=True,
        duration_ms=12,
        retry_in_ms=40,
    )


async def test_first_claim_creates_the_document_with_a_lease(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    assert await claim(events) == Claimed(attempts=0, attempt_log=())
    document = await events.get(KEY)
    assert document is not None
    assert document["status"] == "processing"
    assert document["lease_until"] == T0 + timedelta(seconds=30)
    assert (document["source"], document["event_id"]) == ("acme", "evt_1")
    assert (document["lease_job_id"], document["lease_token"]) == (KEY, "t1")
    assert document["first_seen_at"] == T0


async def test_live_lease_of_another_job_is_reported_not_taken(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    await claim(events)
    result = await claim(events, job_id="other-job", token="t2", now=T0 + timedelta(seconds=10))
    assert result == Leased(lease_until=T0 + timedelta(seconds=30), owner="worker-t1")


async def test_expired_lease_is_taken_over_by_second_worker(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    await claim(events)
    later = T0 + timedelta(seconds=31)
    assert isinstance(await claim(events, job_id="other-job", token="t2", now=later), Claimed)
    # The first run's lease is gone: it can no longer end the key.
    assert await events.mark_succeeded(KEY, token="t1", now=later) is False
    assert await events.mark_succeeded(KEY, token="t2", now=later) is True


async def test_same_job_id_takes_over_its_own_live_lease_after_a_crash(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    await claim(events, token="t1")
    assert isinstance(await claim(events, token="t2", now=T0 + timedelta(seconds=5)), Claimed)


async def test_succeeded_and_dead_lettered_keys_are_already_done(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    await claim(events)
    await events.mark_succeeded(KEY, token="t1", now=T0)
    assert await claim(events, token="t2") == AlreadyDone(EventStatus.SUCCEEDED)
    assert await claim(events, job_id="x", token="t3") == AlreadyDone(EventStatus.SUCCEEDED)


async def test_failed_attempt_is_counted_logged_and_makes_the_key_claimable(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    await claim(events)
    assert await events.record_failure(KEY, token="t1", attempt=failure(1), now=T0) is True
    document = await events.get(KEY)
    assert document is not None
    assert document["status"] == "retrying"
    assert document["attempts"] == 1
    assert document["last_error"] == {
        "code": "downstream_unavailable",
        "message": "downstream answered 503",
    }
    assert "lease_until" not in document
    again = await claim(events, job_id="another", token="t2")
    assert again == Claimed(attempts=1, attempt_log=(failure(1),))


async def test_release_gives_the_lease_back_without_counting(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    await claim(events)
    assert await events.release(KEY, token="t1", now=T0) is True
    document = await events.get(KEY)
    assert document is not None
    assert (document["status"], document["attempts"]) == ("retrying", 0)


async def test_replay_job_reclaims_a_dead_lettered_key_with_a_fresh_count(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    await claim(events)
    await events.mark_dead_lettered(KEY, token="t1", attempt=failure(1), now=T0)
    assert await claim(events, job_id="replay-1", token="t2") == AlreadyDone(
        EventStatus.DEAD_LETTERED
    )
    result = await claim(events, job_id="replay-1", token="t3", replay=True)
    assert result == Claimed(attempts=0, attempt_log=(failure(1),))
    document = await events.get(KEY)
    assert document is not None
    assert "completed_at" not in document


async def test_concurrent_claims_of_one_key_lease_it_exactly_once(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    results = await asyncio.gather(
        *(claim(events, job_id=f"job-{n}", token=f"t{n}") for n in range(20))
    )
    assert sum(isinstance(r, Claimed) for r in results) == 1
    assert all(isinstance(r, Claimed | Leased) for r in results)


async def test_dead_letter_document_has_the_contract_fields(
    mongo_db: AsyncDatabase[Document],
) -> None:
    dead_letters = DeadLetters(mongo_db)
    await dead_letters.dead_letter(
        KEY,
        source="acme",
        event_id="evt_1",
        shipment_id="shp_1",
        event={"event_id": "evt_1"},
        request_id="req_1",
        reason=DeadLetterReason.RETRIES_EXHAUSTED,
        code="downstream_unavailable",
        message="downstream answered 503",
        attempts=[failure(1), failure(2, 1)],
        now=T0,
    )
    document = await dead_letters.get(KEY)
    assert document is not None
    assert document["idempotency_key"] == KEY
    assert document["reason"] == "retries_exhausted"
    assert document["status"] == "pending"
    assert document["error"] == {
        "code": "downstream_unavailable",
        "message": "downstream answered 503",
    }
    assert document["replays"] == []
    assert document["dead_lettered_at"] == T0
    assert [set(a) for a in document["attempts"]] == [
        {"attempt", "at", "code", "message", "transient", "duration_ms"}
    ] * 2


async def test_writing_a_dead_letter_twice_adds_only_new_attempts(
    mongo_db: AsyncDatabase[Document],
) -> None:
    dead_letters = DeadLetters(mongo_db)

    async def write(attempts: list[AttemptRecord], status_after: str | None = None) -> None:
        await dead_letters.dead_letter(
            KEY,
            source="acme",
            event_id="evt_1",
            shipment_id="shp_1",
            event={},
            request_id=None,
            reason=DeadLetterReason.PERMANENT,
            code="invalid_transition",
            message="terminal",
            attempts=attempts,
            now=T0,
        )

    await write([failure(1)])
    await mongo_db[DEAD_LETTER_EVENTS].update_one(
        {"_id": KEY},
        {"$set": {"status": "replayed"}, "$push": {"replays": {"job_id": "r1", "outcome": None}}},
    )
    await write([failure(1), failure(1, 60)])
    document = await dead_letters.get(KEY)
    assert document is not None
    assert document["status"] == "pending"
    assert [a["at"] for a in document["attempts"]] == [T0, T0 + timedelta(seconds=60)]
    assert document["replays"] == [{"job_id": "r1", "outcome": None}]


async def test_replay_outcome_lands_in_the_entry_of_its_job(
    mongo_db: AsyncDatabase[Document],
) -> None:
    dead_letters = DeadLetters(mongo_db)
    await mongo_db[DEAD_LETTER_EVENTS].insert_one(
        {
            "_id": KEY,
            "status": "pending",
            "replays": [{"job_id": "r1", "outcome": None}, {"job_id": "r2", "outcome": None}],
        }
    )
    assert await dead_letters.record_replay_outcome(
        KEY, job_id="r2", outcome=ReplayOutcome.SUCCEEDED, key_succeeded=True, now=T0
    )
    document = await dead_letters.get(KEY)
    assert document is not None
    assert document["status"] == "replayed"
    assert [r["outcome"] for r in document["replays"]] == [None, "succeeded"]
    assert not await dead_letters.record_replay_outcome(
        KEY, job_id="nope", outcome=ReplayOutcome.DUPLICATE, key_succeeded=True, now=T0
    )


async def test_index_setup_is_idempotent(mongo_db: AsyncDatabase[Document]) -> None:
    specs = index_specs(dedupe_ttl_s=30 * 86_400)
    first = await ensure_indexes(mongo_db, specs)
    assert {c.action for c in first} == {IndexAction.CREATED}
    before = {
        name: await mongo_db[name].index_information()
        for name in (PROCESSED_EVENTS, DEAD_LETTER_EVENTS)
    }
    second = await ensure_indexes(mongo_db, specs)
    assert {c.action for c in second} == {IndexAction.UNCHANGED}
    after = {
        name: await mongo_db[name].index_information()
        for name in (PROCESSED_EVENTS, DEAD_LETTER_EVENTS)
    }
    assert after == before


async def test_ttl_on_succeeded_keys_follows_the_dedupe_setting(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await ensure_indexes(mongo_db, index_specs(dedupe_ttl_s=100))
    changes = await ensure_indexes(mongo_db, index_specs(dedupe_ttl_s=200))
    assert [c.action for c in changes if c.name == "succeeded_ttl"] in (
        [IndexAction.UPDATED],
        [IndexAction.REBUILT],  # servers without collMod
    )
    ttl = (await mongo_db[PROCESSED_EVENTS].index_information())["succeeded_ttl"]
    assert ttl["expireAfterSeconds"] == 200
    assert dict(ttl["partialFilterExpression"]) == {"status": "succeeded"}
    assert [tuple(k) for k in ttl["key"]] == [("completed_at", 1)]


async def test_dead_letter_idempotency_key_is_unique(mongo_db: AsyncDatabase[Document]) -> None:
    from shared.storage.errors import StoreRejected
    from shared.storage.mongo import translate_errors

    await ensure_indexes(mongo_db, index_specs(dedupe_ttl_s=100))
    await mongo_db[DEAD_LETTER_EVENTS].insert_one({"_id": "a", "idempotency_key": KEY})
    with pytest.raises(StoreRejected), translate_errors("insert"):
        await mongo_db[DEAD_LETTER_EVENTS].insert_one({"_id": "b", "idempotency_key": KEY})
