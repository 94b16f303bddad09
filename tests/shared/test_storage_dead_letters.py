"""dead_letter_events documents, against the wire server."""

from __future__ import annotations

from datetime import timedelta

import msgspec
from pymongo.asynchronous.database import AsyncDatabase

from shared.contracts import ReplayRef
from shared.storage.dead_letters import (
    DeadLetterDocument,
    DeadLetterReason,
    DeadLetters,
    ReplayOutcome,
)
from shared.storage.events import AttemptRecord
from shared.storage.mongo import DEAD_LETTER_EVENTS, Document
from tests.factories import KEY, T0, failure, queued_with_body


async def test_dead_letter_document_has_the_contract_fields(
    mongo_db: AsyncDatabase[Document],
) -> None:
    dead_letters = DeadLetters(mongo_db)
    await dead_letters.dead_letter(
        queued_with_body(b'{"event_id": "evt_1"}'),
        shipment_id="shp_1",
        event_type="shipment.picked_up",
        reason=DeadLetterReason.RETRIES_EXHAUSTED,
        code="downstream_unavailable",
        message="downstream answered 503",
        attempts=[failure(1), failure(2, 1)],
        now=T0,
    )
    document = await mongo_db[DEAD_LETTER_EVENTS].find_one({"_id": KEY})
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
    # The queued event whole, its body as the exact original text (never re-encoded).
    assert (document["event"], document["request_id"]) == ('{"event_id": "evt_1"}', "req_1")
    assert (document["source"], document["event_id"], document["shipment_id"]) == (
        "acme",
        "evt_1",
        "shp_1",
    )
    typed = await dead_letters.get(KEY)
    assert typed is not None
    assert typed.body == b'{"event_id": "evt_1"}'
    assert typed.queued_event(replay=ReplayRef(by="ops", at_ms=1), request_id="x") == (
        msgspec.structs.replace(
            queued_with_body(b'{"event_id": "evt_1"}'), replay=ReplayRef(by="ops", at_ms=1)
        )
    )
    assert [set(a) for a in document["attempts"]] == [
        {"attempt", "at", "code", "message", "transient", "duration_ms"}
    ] * 2


async def test_writing_a_dead_letter_twice_adds_only_new_attempts(
    mongo_db: AsyncDatabase[Document],
) -> None:
    dead_letters = DeadLetters(mongo_db)

    async def write(attempts: list[AttemptRecord], status_after: str | None = None) -> None:
        await dead_letters.dead_letter(
            queued_with_body(b"{}"),
            shipment_id="shp_1",
            event_type=None,
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
    document = await mongo_db[DEAD_LETTER_EVENTS].find_one({"_id": KEY})
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
    document = await mongo_db[DEAD_LETTER_EVENTS].find_one({"_id": KEY})
    assert document is not None
    assert document["status"] == "replayed"
    assert [r["outcome"] for r in document["replays"]] == [None, "succeeded"]
    assert not await dead_letters.record_replay_outcome(
        KEY, job_id="nope", outcome=ReplayOutcome.DUPLICATE, key_succeeded=True, now=T0
    )


async def undecodable_letter(
    mongo_db: AsyncDatabase[Document], body: bytes, message: str
) -> DeadLetterDocument:
    """Dead-letter ``body`` as a permanent ``undecodable_payload`` failure; the stored letter."""
    dead_letters = DeadLetters(mongo_db)
    await dead_letters.dead_letter(
        queued_with_body(body),
        shipment_id=None,
        event_type=None,
        reason=DeadLetterReason.PERMANENT,
        code="undecodable_payload",
        message=message,
        attempts=[failure(1)],
        now=T0,
    )
    letter = await dead_letters.get(KEY)
    assert letter is not None
    return letter


async def test_a_body_the_store_refuses_is_dead_lettered_without_it_saying_why(
    mongo_db: AsyncDatabase[Document],
) -> None:
    # Over MongoDB's 16 MiB document limit: the driver refuses to send it.
    body = b'{"data": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    letter = await undecodable_letter(mongo_db, body, "too big")
    assert (letter.status, letter.error.code, letter.body) == (
        "pending",
        "undecodable_payload",
        None,
    )
    assert letter.event_omitted is not None
    assert "dead_letter" in letter.event_omitted


async def test_a_body_that_is_not_utf8_is_kept_as_binary_byte_exact(
    mongo_db: AsyncDatabase[Document],
) -> None:
    body = b'{"data": "\xff\xfe"}'
    letter = await undecodable_letter(mongo_db, body, "not UTF-8")
    assert letter.body == body
