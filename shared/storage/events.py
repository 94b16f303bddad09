"""``processed_events``: one document per idempotency key, with a lease.

The document is the worker pool's record of what happened to a key (docs/contract.md §4.1)::

    (absent) ──claim──▶ processing ──mark_succeeded──▶ succeeded
                          │  ▲   │
          record_failure  │  │   └──mark_dead_lettered──▶ dead_lettered
          release         ▼  │claim                          │
                        retrying                             │ claim (replay job only)
                                                             ▼
                                                         processing

A claim is a lease: ``lease_until`` (worker clock), ``lease_job_id`` (the arq
job id), ``lease_owner`` (the worker id) and ``lease_token`` (fresh per run).
Every write that ends a run is conditioned on the token, so a run whose lease
was taken over cannot overwrite its successor's outcome.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec
from msgspec import Struct
from pymongo import UpdateOne

from shared.storage.mongo import (
    DUPLICATE_KEY_CODES,
    PROCESSED_EVENTS,
    Collection,
    Document,
    literal,
    read_as,
    translate_errors,
)

__all__ = [
    "ATTEMPT_LOG_LIMIT",
    "AlreadyDone",
    "AttemptRecord",
    "Claim",
    "ClaimRequest",
    "Claimed",
    "ErrorInfo",
    "EventStatus",
    "FailedAttempt",
    "Leased",
    "ProcessedEvent",
    "ProcessedEvents",
]

ATTEMPT_LOG_LIMIT: Final = 20
"""Newest failed attempts kept in ``attempt_log`` (the count in ``attempts`` is exact)."""
_CLAIMED_FIELDS: Final = {"attempts": True, "attempt_log": True}
_READ_FIELDS: Final = dict.fromkeys(("status", "lease_until", "lease_owner", "lease_token"), True)
"""What a refused claim is decided from (and ``lease_token``: which claim won)."""
_ENDED_FIELDS: Final = {"status": True, "completed_at": True, "lease_token": True}
_LEASE_FIELDS: Final = {"lease_until": "", "lease_job_id": "", "lease_owner": "", "lease_token": ""}


class EventStatus(enum.StrEnum):
    """Values of ``processed_events.status``."""

    PROCESSING = "processing"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"


class ErrorInfo(Struct, frozen=True, kw_only=True):
    """``{code, message}`` of ``last_error`` and of a dead letter's ``error``."""

    code: str
    message: str


class FailedAttempt(Struct, frozen=True, kw_only=True):
    """One failed attempt with docs/contract.md §4.1's fields: an entry of a dead letter's
    ``attempts``."""

    attempt: int
    at: datetime
    code: str
    message: str
    transient: bool
    duration_ms: int


class AttemptRecord(FailedAttempt, frozen=True, kw_only=True):
    """One failed attempt, as kept in ``attempt_log`` and in a dead letter's ``attempts``.

    ``retry_in_ms`` (``attempt_log`` only) is the delay chosen before the next
    attempt; ``None`` when the attempt ended in a dead letter.
    """

    retry_in_ms: int | None = None

    def to_document(self) -> Document:
        """The ``attempt_log`` entry."""
        return msgspec.structs.asdict(self)

    def to_dead_letter_document(self) -> Document:
        """The entry of a dead letter's ``attempts`` list (:class:`FailedAttempt`'s fields)."""
        return {name: getattr(self, name) for name in FailedAttempt.__struct_fields__}


class ProcessedEvent(Struct, frozen=True, kw_only=True, rename={"key": "_id"}):
    """A ``processed_events`` document as read back (``key`` is its ``_id``)."""

    key: str
    status: EventStatus
    source: str | None = None
    event_id: str | None = None
    attempts: int = 0
    last_error: ErrorInfo | None = None
    attempt_log: tuple[AttemptRecord, ...] = ()
    first_seen_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    success_duration_ms: int | None = None
    body: bytes | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    lease_job_id: str | None = None


class Claimed(Struct, frozen=True):
    """This run holds the key's lease; ``attempts`` failed attempts happened before."""

    attempts: int
    attempt_log: tuple[AttemptRecord, ...]


class AlreadyDone(Struct, frozen=True):
    """The key reached a terminal status (``succeeded`` or ``dead_lettered``)."""

    status: EventStatus


class Leased(Struct, frozen=True):
    """Another job holds a live lease on the key until ``lease_until``."""

    lease_until: datetime
    owner: str | None


Claim = Claimed | AlreadyDone | Leased


class ClaimRequest(Struct, frozen=True, kw_only=True):
    """One key to claim in :meth:`ProcessedEvents.claim_many`: :meth:`~ProcessedEvents.claim`'s
    arguments that differ from one job to the next."""

    key: str
    source: str
    event_id: str
    job_id: str
    token: str
    replay: bool = False
    body: bytes | None = None


class ProcessedEvents(Collection):
    """Domain operations on ``processed_events``; every PyMongo error is translated."""

    collection_name = PROCESSED_EVENTS

    async def claim(
        self,
        key: str,
        *,
        source: str,
        event_id: str,
        job_id: str,
        owner: str,
        token: str,
        now: datetime,
        lease_s: float,
        replay: bool = False,
        body: bytes | None = None,
    ) -> Claim:
        """Take the key's lease, or report why not.

        Claimable: absent, ``retrying``, ``processing`` under an expired lease,
        ``processing`` under this same arq job id (arq never runs one job id
        twice at once, so that lease belongs to a run that died), and, for an
        operator's replay only, ``dead_lettered`` (its attempt count restarts
        at 0; the log is kept). One round trip when the claim succeeds.
        """
        query, update = _claim_write(
            ClaimRequest(
                key=key,
                source=source,
                event_id=event_id,
                job_id=job_id,
                token=token,
                replay=replay,
                body=body,
            ),
            owner=owner,
            now=now,
            lease_s=lease_s,
        )
        # The slow path runs at most twice: a lease that expired or a key that
        # became `retrying` between the failed upsert and the read is claimed again.
        for _ in range(2):
            # None: the key exists and is not claimable by this run; the read finds out why.
            document = await self._upsert("claim", query, update, _CLAIMED_FIELDS)
            if document is not None:
                return _claimed(document)
            with translate_errors("claim.read"):
                current = await self._collection.find_one({"_id": key}, _READ_FIELDS)
            refused = _refusal(current, now=now, replay=replay)
            if refused is not None:
                return refused
        # Claimable on read but not on write twice in a row: someone else keeps
        # winning the key; back off for a moment as if it were leased.
        return Leased(lease_until=now + timedelta(seconds=1), owner=None)

    async def claim_many(
        self, requests: Sequence[ClaimRequest], *, owner: str, now: datetime, lease_s: float
    ) -> list[Claim]:
        """:meth:`claim` for each request (distinct keys), in two round trips for the batch.

        Result ``i`` is what ``claim`` would return for request ``i``. One unordered
        ``bulk_write`` of the same conditional upserts as :meth:`claim` (a
        duplicate-key error is "exists, not claimable", as there), then one read of
        the keys: a key whose stored ``lease_token`` is the request's was won by
        this write; any other is refused from the read as :meth:`claim` refuses it.
        A key the read finds claimable but this write did not win (the race
        :meth:`claim` handles with its second attempt) is left to :meth:`claim`
        alone. Any other failure raises the translated :class:`StorageError`.
        """
        if not requests:
            return []
        keys = [request.key for request in requests]
        if len(set(keys)) != len(keys):
            raise ValueError("claim_many: the requests' keys must be distinct")
        writes = [
            UpdateOne(*_claim_write(request, owner=owner, now=now, lease_s=lease_s), upsert=True)
            for request in requests
        ]
        written = await self._bulk_write("claim_many", writes, ordered=False)
        written.raise_write_errors("claim_many", allowed=DUPLICATE_KEY_CODES)
        found = await self._read_many("claim_many.read", keys, _READ_FIELDS | _CLAIMED_FIELDS)
        claims: list[Claim] = []
        for request in requests:
            current = found.get(request.key)
            if current is not None and current.get("lease_token") == request.token:
                claims.append(_claimed(current))
                continue
            refused = _refusal(current, now=now, replay=request.replay)
            if refused is not None:
                claims.append(refused)
                continue
            claims.append(
                await self.claim(
                    request.key,
                    source=request.source,
                    event_id=request.event_id,
                    job_id=request.job_id,
                    owner=owner,
                    token=request.token,
                    now=now,
                    lease_s=lease_s,
                    replay=request.replay,
                    body=request.body,
                )
            )
        return claims

    async def _read_many(
        self, operation: str, keys: Sequence[str], fields: Document
    ) -> dict[str, Document]:
        """The documents of ``keys`` that exist (``fields`` of each), by key: one ``find``."""
        with translate_errors(operation):
            return {
                document["_id"]: document
                async for document in self._collection.find({"_id": {"$in": list(keys)}}, fields)
            }

    async def mark_succeeded(
        self, key: str, *, token: str, now: datetime, duration_ms: int | None = None
    ) -> bool:
        """End this run's lease with ``succeeded``; ``False`` if the lease was lost.

        ``duration_ms`` (the successful run's) is kept for the console's timeline.
        """
        return await self._end_run(
            "mark_succeeded", {"_id": key, "lease_token": token}, _succeeded(now, duration_ms)
        )

    async def mark_succeeded_many(
        self, ends: Sequence[tuple[str, str, int | None]], *, now: datetime
    ) -> list[bool]:
        """:meth:`mark_succeeded` for each ``(key, token, duration_ms)`` (distinct keys).

        One unordered ``bulk_write``; result ``i`` is ``False`` if that run's lease
        was lost. Only when fewer updates matched than were sent, one read finds
        out which keys they were.
        """
        if not ends:
            return []
        keys = [key for key, _, _ in ends]
        if len(set(keys)) != len(keys):
            raise ValueError("mark_succeeded_many: the keys must be distinct")
        writes = [
            UpdateOne({"_id": key, "lease_token": token}, _end_update(_succeeded(now, duration_ms)))
            for key, token, duration_ms in ends
        ]
        written = await self._bulk_write("mark_succeeded_many", writes, ordered=False)
        written.raise_write_errors("mark_succeeded_many")
        missed = len(ends) - written.matched
        if missed == 0:
            return [True] * len(ends)
        found = await self._read_many("mark_succeeded_many.read", keys, _ENDED_FIELDS)
        # Which keys the missed updates were, from the state our update leaves: status
        # `succeeded`, `completed_at` = `now` (at BSON's millisecond precision), no lease.
        # A key we ended keeps that state (a succeeded key is claimable by no one,
        # and no other write touches it), so a key not in it is one we missed. The
        # converse fails only when a run that took our lease over also marked the
        # key succeeded at the very same millisecond `now`: then more keys look
        # ended by us than matched, and none of the look-alikes is proven ours, so
        # all of them are reported lost. Never `True` for a lease not held; at
        # worst a `False` (a `job.lease_lost` warning) for one that was.
        stored_now = _bson_precision(now)
        looks_ended = [
            document is not None
            and document.get("status") == EventStatus.SUCCEEDED
            and document.get("completed_at") == stored_now
            and "lease_token" not in document
            for document in map(found.get, keys)
        ]
        if looks_ended.count(False) < missed:
            return [False] * len(ends)
        return looks_ended

    async def record_failure(
        self, key: str, *, token: str, attempt: AttemptRecord, now: datetime
    ) -> bool:
        """Count a failed attempt and set ``retrying``; ``False`` if the lease was lost."""
        return await self._count_attempt(key, token, attempt, now, final=False)

    async def mark_dead_lettered(
        self, key: str, *, token: str, attempt: AttemptRecord, now: datetime
    ) -> bool:
        """Count the final attempt and set ``dead_lettered``; ``False`` if the lease was lost."""
        return await self._count_attempt(key, token, attempt, now, final=True)

    async def release(self, key: str, *, token: str, now: datetime) -> bool:
        """Give the lease back without counting an attempt (the run was cancelled)."""
        return await self._end_run(
            "release",
            {"_id": key, "lease_token": token, "status": EventStatus.PROCESSING},
            {"status": EventStatus.RETRYING, "updated_at": now},
        )

    async def _count_attempt(
        self, key: str, token: str, attempt: AttemptRecord, now: datetime, *, final: bool
    ) -> bool:
        """End the run with its failed ``attempt``: ``dead_lettered`` if ``final``, else
        ``retrying``."""
        fields: Document = {"status": EventStatus.RETRYING, "updated_at": now}
        if final:
            fields.update(status=EventStatus.DEAD_LETTERED, completed_at=now)
        operation = "mark_dead_lettered" if final else "record_failure"
        return await self._end_run(operation, {"_id": key, "lease_token": token}, fields, attempt)

    async def _end_run(
        self,
        operation: str,
        match: Document,
        fields: Document,
        attempt: AttemptRecord | None = None,
    ) -> bool:
        """End a run's lease with one update; ``False`` if ``match`` (its lease) no longer holds."""
        update = _end_update(fields)
        if attempt is not None:
            fields["attempts"] = attempt.attempt
            fields["last_error"] = {"code": attempt.code, "message": attempt.message}
            # Bounded in the same update: a key retried for weeks keeps a small document.
            update["$push"] = {
                "attempt_log": {"$each": [attempt.to_document()], "$slice": -ATTEMPT_LOG_LIMIT}
            }
        with translate_errors(operation):
            result = await self._collection.update_one(match, update)
        return result.matched_count == 1

    async def mark_undecodable(self, key: str, *, code: str, message: str, now: datetime) -> None:
        """Record a job whose payload could not be decoded as ``dead_lettered``.

        Only when the key has no document yet: a payload we cannot read must not
        overwrite what a readable job of the same key did.
        """
        with translate_errors("mark_undecodable"):
            await self._collection.update_one(
                {"_id": key},
                {
                    "$setOnInsert": {
                        "status": EventStatus.DEAD_LETTERED,
                        "attempts": 1,
                        "last_error": {"code": code, "message": message},
                        "first_seen_at": now,
                        "completed_at": now,
                        "updated_at": now,
                    }
                },
                upsert=True,
            )

    async def get(self, key: str) -> ProcessedEvent | None:
        """The key's document, or ``None``."""
        with translate_errors("get"):
            document = await self._collection.find_one({"_id": key})
        return None if document is None else _typed(document)

    async def scan(self) -> AsyncIterator[ProcessedEvent]:
        """Every document, in no particular order (for the proof tooling's reports)."""
        with translate_errors("scan"):
            async for document in self._collection.find({}):
                yield _typed(document)

    async def status(self, key: str) -> EventStatus | None:
        """The key's status (one small read), or ``None`` if the key is unknown."""
        with translate_errors("status"):
            document = await self._collection.find_one({"_id": key}, {"status": True})
        if document is None or document.get("status") is None:
            return None
        return EventStatus(document["status"])


def _typed(document: Document) -> ProcessedEvent:
    return read_as(ProcessedEvent, document, "processed event")


def _claim_write(
    request: ClaimRequest, *, owner: str, now: datetime, lease_s: float
) -> tuple[Document, list[Document]]:
    """The filter (what is claimable) and the update pipeline of one claim."""
    claimable: list[Document] = [
        {"status": EventStatus.RETRYING},
        {"status": EventStatus.PROCESSING, "lease_until": {"$lt": now}},
        {"status": EventStatus.PROCESSING, "lease_job_id": request.job_id},
    ]
    if request.replay:
        claimable.append({"status": EventStatus.DEAD_LETTERED})
    query = {"_id": request.key, "$or": claimable}
    # Kept as first written: the courier's body byte-exact (BSON binary) for the
    # console's timeline, set by the first claim in the write that happens anyway.
    kept: Document = {
        "source": literal(request.source),
        "event_id": literal(request.event_id),
        "first_seen_at": now,
        **({} if request.body is None else {"body": literal(request.body)}),
    }
    lease: Document = {
        "lease_until": now + timedelta(seconds=lease_s),
        "lease_job_id": literal(request.job_id),
        "lease_owner": literal(owner),
        "lease_token": literal(request.token),
    }
    return query, _claim_pipeline(kept, lease, now)


def _claimed(document: Document) -> Claimed:
    """The claim a document whose lease this run holds stands for."""
    return Claimed(
        attempts=int(document.get("attempts", 0)),
        attempt_log=tuple(
            msgspec.convert(entry, AttemptRecord) for entry in document.get("attempt_log", ())
        ),
    )


def _refusal(
    current: Document | None, *, now: datetime, replay: bool
) -> AlreadyDone | Leased | None:
    """Why a key read as ``current`` is not claimable; ``None`` if it is (or is absent)."""
    if current is None:
        return None
    status = current.get("status")
    if status == EventStatus.SUCCEEDED or (status == EventStatus.DEAD_LETTERED and not replay):
        return AlreadyDone(status=EventStatus(status))
    lease_until = current.get("lease_until")
    if status == EventStatus.PROCESSING and lease_until is not None and lease_until >= now:
        return Leased(lease_until=lease_until, owner=current.get("lease_owner"))
    return None


def _succeeded(now: datetime, duration_ms: int | None) -> Document:
    """The fields a successful run's end sets."""
    fields: Document = {"status": EventStatus.SUCCEEDED, "completed_at": now, "updated_at": now}
    if duration_ms is not None:
        fields["success_duration_ms"] = duration_ms
    return fields


def _end_update(fields: Document) -> Document:
    """The update that ends a run's lease with ``fields``."""
    return {"$set": fields, "$unset": _LEASE_FIELDS}


def _bson_precision(moment: datetime) -> datetime:
    """``moment`` as BSON stores it: truncated to the millisecond."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _claim_pipeline(kept: Document, lease: Document, now: datetime) -> list[Document]:
    # An update pipeline (not operators) so that a replay's claim of a
    # dead-lettered key can restart the attempt count in the same round trip.
    fields: dict[str, Any] = {
        **{name: {"$ifNull": ["$" + name, value]} for name, value in kept.items()},
        "attempts": {
            "$cond": [
                {"$eq": ["$status", EventStatus.DEAD_LETTERED]},
                0,
                {"$ifNull": ["$attempts", 0]},
            ]
        },
        "attempt_log": {"$ifNull": ["$attempt_log", []]},
        "status": literal(EventStatus.PROCESSING),
        **lease,
        "updated_at": now,
    }
    return [{"$set": fields}, {"$unset": ["completed_at"]}]
