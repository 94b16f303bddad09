"""processed_events leases and run outcomes, against the wire server."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from shared.storage.events import (
    AlreadyDone,
    Claimed,
    EventStatus,
    Leased,
    ProcessedEvents,
)
from shared.storage.mongo import PROCESSED_EVENTS, Document
from tests.factories import KEY, T0, failure


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


async def test_first_claim_creates_the_document_with_a_lease(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    assert await claim(events) == Claimed(attempts=0, attempt_log=())
    document = await mongo_db[PROCESSED_EVENTS].find_one({"_id": KEY})
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
    document = await mongo_db[PROCESSED_EVENTS].find_one({"_id": KEY})
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
    document = await mongo_db[PROCESSED_EVENTS].find_one({"_id": KEY})
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
    document = await mongo_db[PROCESSED_EVENTS].find_one({"_id": KEY})
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


async def test_scan_returns_every_document_typed(mongo_db: AsyncDatabase[Document]) -> None:
    events = ProcessedEvents(mongo_db)
    await claim(events)
    await events.mark_succeeded(KEY, token="t1", now=T0)
    await mongo_db[PROCESSED_EVENTS].insert_one({"_id": "acme:evt_2", "status": "retrying"})
    scanned = {record.key: record async for record in events.scan()}
    assert {key: record.status for key, record in scanned.items()} == {
        KEY: EventStatus.SUCCEEDED,
        "acme:evt_2": EventStatus.RETRYING,
    }
    assert scanned[KEY].completed_at == T0
