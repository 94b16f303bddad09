"""``dead_letter_events``: one document per idempotency key that failed for good.

Document (docs/contract.md §4.1): ``_id`` and ``idempotency_key`` (both the key; the
unique index on ``idempotency_key`` is created by ``gateway init-db``),
``source``, ``event_id``, ``shipment_id``, ``event_type``, ``event`` (the
courier's body byte-exact: a string holding the original JSON text, or BSON
binary for a body that is not UTF-8; never re-encoded field by field, see
``docs/contract.md §4.4``), ``request_id``, ``received_at_ms`` (together with
``event`` and ``source``: the queued event whole), ``reason`` (``permanent`` |
``retries_exhausted``), ``error`` (``{code, message}``), ``attempts`` (list of
``{attempt, at, code, message, transient, duration_ms}``), ``dead_lettered_at``,
``status`` (``pending`` | ``replayed`` | ``discarded``), ``replays`` (list of
``{at, by, job_id, outcome}``), ``discard_reason``, ``created_at``,
``updated_at``; ``event_omitted`` says why ``event`` is ``null`` when the
store refused the body itself.

Reads return :class:`DeadLetterDocument`, a typed view of the stored document.

Writing a dead letter is idempotent: ``attempts`` grows with ``$addToSet``,
so writing the same attempts again (a run that died between the dead letter
and marking the key) adds nothing, and a replayed event that fails again
returns the same document to ``pending`` with only its new attempts appended.

The operator's side (:mod:`shared.dlq`) adds ``discarded_by`` and
``discarded_at`` next to ``discard_reason``, and changes a document only with
compare-and-set updates conditioned on ``status: pending`` and the number of
``replays`` entries it has seen (:meth:`DeadLetters.begin_replay`,
:meth:`DeadLetters.close_as_replayed`, :meth:`DeadLetters.discard`): of two
operators acting on the same version of a document, exactly one wins.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec
from bson.binary import Binary
from msgspec import Struct
from pymongo import DESCENDING

from shared.contracts import QueuedEvent, ReplayRef
from shared.storage.errors import DocumentNotStorable
from shared.storage.events import AttemptRecord, ErrorInfo
from shared.storage.mongo import DEAD_LETTER_EVENTS, Collection, Document, read_as, translate_errors

__all__ = [
    "DeadLetterDocument",
    "DeadLetterFilter",
    "DeadLetterReason",
    "DeadLetterStatus",
    "DeadLetters",
    "PageKey",
    "ReplayOutcome",
    "ReplayRecord",
    "Selection",
]


class DeadLetterReason(enum.StrEnum):
    """Why an event was dead-lettered."""

    PERMANENT = "permanent"
    RETRIES_EXHAUSTED = "retries_exhausted"


class DeadLetterStatus(enum.StrEnum):
    """Where an operator stands with a dead letter."""

    PENDING = "pending"
    REPLAYED = "replayed"
    DISCARDED = "discarded"


class ReplayOutcome(enum.StrEnum):
    """The ``outcome`` of a ``replays`` entry (``null`` while the replay job has not ended).

    A worker writes the first three when the replay job ends; the replay tool
    writes the last two itself.
    """

    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    DUPLICATE = "duplicate"
    ALREADY_SUCCEEDED = "already_succeeded"
    """No job was enqueued: the key had already succeeded, so the entry was closed."""
    ENQUEUE_FAILED = "enqueue_failed"
    """The replay job could not be queued (Redis unavailable); nothing will run."""


class ReplayRecord(Struct, frozen=True, kw_only=True):
    """One ``replays`` entry; ``outcome`` is ``None`` until the replay job ends.

    ``job_id`` is ``None`` when no job was needed (``already_succeeded``).
    """

    at: datetime | None = None
    by: str | None = None
    job_id: str | None = None
    outcome: str | None = None


def _unknown_error() -> ErrorInfo:
    return ErrorInfo(code="unknown", message="")


class DeadLetterDocument(Struct, frozen=True, kw_only=True, rename={"key": "_id"}):
    """A ``dead_letter_events`` document as read back (``key`` is its ``_id``)."""

    key: str
    source: str = ""
    event_id: str | None = None
    shipment_id: str | None = None
    event_type: str | None = None
    event: Any = None
    """The stored body: ``str`` (JSON text), ``bytes`` (BSON binary), or ``None``;
    read it as :attr:`body`."""
    event_omitted: str | None = None
    request_id: str | None = None
    received_at_ms: int | None = None
    adapter: str = "standard"
    """How the body is read (docs/contract.md §3.4); older documents hold canonical events."""
    reason: str = ""
    error: ErrorInfo = msgspec.field(default_factory=_unknown_error)
    attempts: tuple[AttemptRecord, ...] = ()
    dead_lettered_at: datetime
    status: str = ""
    replays: tuple[ReplayRecord, ...] = ()
    discard_reason: str | None = None
    discarded_by: str | None = None
    discarded_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def body(self) -> bytes | None:
        """The courier's body byte-exact, or ``None`` if none was stored.

        A dead letter written before bodies were kept opaque holds the event as
        a sub-document; it is re-encoded as JSON (the only lossy case).
        """
        match self.event:
            case str():
                return self.event.encode()
            case bytes():
                return self.event
            case dict():
                return msgspec.json.encode(self.event)
        return None

    @property
    def event_json(self) -> str | None:
        """:attr:`body` as text (the original JSON), for readers that show it."""
        body = self.body
        return None if body is None else body.decode(errors="replace")

    def queued_event(self, *, replay: ReplayRef, request_id: str) -> QueuedEvent:
        """The queued event this dead letter keeps, marked as ``replay``.

        ``request_id`` is used only when the document has none of its own.
        Raises ``ValueError`` when no body was stored (nothing to replay).
        """
        body = self.body
        if body is None or self.event_id is None:
            raise ValueError(self.event_omitted or "the dead letter holds no event")
        return QueuedEvent(
            idempotency_key=self.key,
            source=self.source,
            event_id=self.event_id,
            body=body,
            request_id=self.request_id or request_id,
            received_at_ms=self.received_at_ms or replay.at_ms,
            replay=replay,
            adapter=self.adapter,
        )


def _stored_body(body: bytes) -> str | Binary:
    # The API accepts UTF-8 only, so this is the JSON text (readable in any
    # MongoDB shell); anything else is kept as binary, byte for byte.
    try:
        return body.decode()
    except UnicodeDecodeError:
        return Binary(body)


class Selection[Time](Struct, frozen=True, kw_only=True):
    """The fields that select dead letters; ``None`` fields select everything.

    ``code`` is ``error.code``; ``since`` (inclusive) and ``until`` (exclusive)
    bound ``dead_lettered_at``: :class:`DeadLetterFilter` holds them as times, a
    request that names them as text (``gateway dlq``'s options, the admin API's
    bulk replay) as ``str``.
    """

    source: str | None = None
    code: str | None = None
    reason: DeadLetterReason | None = None
    status: DeadLetterStatus | None = None
    since: Time | None = None
    until: Time | None = None


class DeadLetterFilter(Selection[datetime], frozen=True, kw_only=True):
    """Which dead letters a list or bulk replay selects; ``None`` fields select everything.

    ``since`` and ``until`` must be timezone-aware.
    """

    def to_query(self) -> Document:
        """The MongoDB filter (each field has an index with ``dead_lettered_at``)."""
        query: Document = {}
        if self.source is not None:
            query["source"] = self.source
        if self.code is not None:
            query["error.code"] = self.code
        if self.reason is not None:
            query["reason"] = self.reason.value
        if self.status is not None:
            query["status"] = self.status.value
        window: Document = {}
        if self.since is not None:
            window["$gte"] = self.since
        if self.until is not None:
            window["$lt"] = self.until
        if window:
            query["dead_lettered_at"] = window
        return query


class PageKey(Struct, frozen=True, array_like=True):
    """Position in the newest-first order: the last ``(dead_lettered_at, _id)`` seen."""

    dead_lettered_at: datetime
    key: str


class DeadLetters(Collection):
    """Domain operations on ``dead_letter_events``: the worker's writes and the operator's."""

    collection_name = DEAD_LETTER_EVENTS

    async def dead_letter(
        self,
        queued: QueuedEvent,
        *,
        shipment_id: str | None,
        event_type: str | None,
        reason: DeadLetterReason,
        code: str,
        message: str,
        attempts: Sequence[AttemptRecord],
        now: datetime,
    ) -> None:
        """Create or update the key's dead letter and set it ``pending``.

        ``queued`` is kept whole, its body byte-exact. ``shipment_id`` and
        ``event_type`` are what the worker decoded from it (``None`` when it
        could not). One round trip; if the store refuses the document for its
        body (:class:`DocumentNotStorable`, e.g. too large), the dead letter is
        written once more without the body, saying why in ``event_omitted``.
        """
        key = queued.idempotency_key
        fields: Document = {
            "source": queued.source,
            "event_id": queued.event_id,
            "shipment_id": shipment_id,
            "event_type": event_type,
            "event": _stored_body(queued.body),
            "event_omitted": None,
            "request_id": queued.request_id,
            "received_at_ms": queued.received_at_ms,
            "adapter": queued.adapter,
            "reason": reason.value,
            "error": {"code": code, "message": message},
            "dead_lettered_at": now,
            "status": DeadLetterStatus.PENDING.value,
            "updated_at": now,
        }
        update: Document = {
            "$setOnInsert": {"idempotency_key": key, "replays": [], "created_at": now},
            "$set": fields,
            "$addToSet": {"attempts": {"$each": [a.to_dead_letter_document() for a in attempts]}},
            "$unset": {"discard_reason": ""},
        }
        try:
            with translate_errors("dead_letter"):
                await self._collection.update_one({"_id": key}, update, upsert=True)
        except DocumentNotStorable as refused:
            fields.update(event=None, event_omitted=str(refused)[:500])
            with translate_errors("dead_letter"):
                await self._collection.update_one({"_id": key}, update, upsert=True)

    async def record_replay_outcome(
        self,
        key: str,
        *,
        job_id: str,
        outcome: ReplayOutcome,
        key_succeeded: bool,
        now: datetime,
    ) -> bool:
        """Write ``outcome`` into the ``replays`` entry whose ``job_id`` is this job's.

        When the key has succeeded (this replay, or an earlier one whose note was
        lost) the dead letter becomes ``replayed``; a replay that dead-letters
        again was already set back to ``pending`` by :meth:`dead_letter`.
        ``False`` when no entry names this job.
        """
        update: dict[str, Any] = {"replays.$.outcome": outcome.value, "updated_at": now}
        if key_succeeded:
            update["status"] = DeadLetterStatus.REPLAYED.value
        with translate_errors("record_replay_outcome"):
            result = await self._collection.update_one(
                {"_id": key, "replays.job_id": job_id}, {"$set": update}
            )
        return result.matched_count == 1

    async def get(self, key: str) -> DeadLetterDocument | None:
        """The key's dead letter, or ``None``."""
        with translate_errors("get_dead_letter"):
            document = await self._collection.find_one({"_id": key})
        return None if document is None else _typed(document)

    async def page(
        self,
        selection: DeadLetterFilter,
        *,
        after: PageKey | None,
        limit: int,
    ) -> list[DeadLetterDocument]:
        """Up to ``limit`` matching documents, newest ``dead_lettered_at`` first, after ``after``.

        Keyset pagination on ``(dead_lettered_at, _id)``, both descending: a
        document written after the first page was read sorts before the
        position and is not seen again, nor does it shift later pages.
        """
        query = selection.to_query()
        if after is not None:
            query = {
                "$and": [
                    query,
                    {
                        "$or": [
                            {"dead_lettered_at": {"$lt": after.dead_lettered_at}},
                            {"dead_lettered_at": after.dead_lettered_at, "_id": {"$lt": after.key}},
                        ]
                    },
                ]
            }
        with translate_errors("dead_letter_page"):
            cursor = (
                self._collection.find(query)
                .sort([("dead_lettered_at", DESCENDING), ("_id", DESCENDING)])
                .limit(limit)
            )
            return [_typed(document) async for document in cursor]

    async def iterate(
        self,
        selection: DeadLetterFilter,
        *,
        limit: int | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[DeadLetterDocument]:
        """Every matching document (at most ``limit``), newest first, one page in memory."""
        after: PageKey | None = None
        remaining = limit
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            documents = await self.page(selection, after=after, limit=size)
            for document in documents:
                yield document
            if len(documents) < size:
                return
            last = documents[-1]
            after = PageKey(last.dead_lettered_at, last.key)
            if remaining is not None:
                remaining -= len(documents)

    async def count(self, selection: DeadLetterFilter, *, limit: int | None = None) -> int:
        """How many documents match (counting stops at ``limit``)."""
        options: dict[str, Any] = {} if limit is None else {"limit": limit}
        with translate_errors("dead_letter_count"):
            return await self._collection.count_documents(selection.to_query(), **options)

    async def begin_replay(
        self, key: str, *, seen_replays: int, entry: Mapping[str, Any], now: datetime
    ) -> bool:
        """Append a replay's ``replays`` entry if the document is unchanged since it was read.

        The condition is ``status: pending`` and exactly ``seen_replays``
        entries: of concurrent replays of the same document, one appends, the
        others get ``False``.
        """
        with translate_errors("begin_replay"):
            result = await self._collection.update_one(
                _unchanged(key, seen_replays),
                {"$push": {"replays": dict(entry)}, "$set": {"updated_at": now}},
            )
        return result.matched_count == 1

    async def abandon_replay(self, key: str, *, job_id: str, now: datetime) -> bool:
        """Close a replay entry whose job could not be queued (``enqueue_failed``).

        Only while its outcome is still ``null``: if the job did get queued
        after all and a worker already wrote its outcome, that outcome stays.
        """
        with translate_errors("abandon_replay"):
            result = await self._collection.update_one(
                {"_id": key, "replays": {"$elemMatch": {"job_id": job_id, "outcome": None}}},
                {
                    "$set": {
                        "replays.$.outcome": ReplayOutcome.ENQUEUE_FAILED.value,
                        "updated_at": now,
                    }
                },
            )
        return result.matched_count == 1

    async def close_as_replayed(
        self, key: str, *, seen_replays: int, entry: Mapping[str, Any], now: datetime
    ) -> bool:
        """Set ``replayed`` without a job (the key already succeeded), recording ``entry``.

        Same compare-and-set condition as :meth:`begin_replay`.
        """
        with translate_errors("close_as_replayed"):
            result = await self._collection.update_one(
                _unchanged(key, seen_replays),
                {
                    "$push": {"replays": dict(entry)},
                    "$set": {"status": DeadLetterStatus.REPLAYED.value, "updated_at": now},
                },
            )
        return result.matched_count == 1

    async def discard(
        self, key: str, *, seen_replays: int, by: str, reason: str, now: datetime
    ) -> bool:
        """Set ``discarded`` with the operator's reason; same condition as :meth:`begin_replay`."""
        with translate_errors("discard"):
            result = await self._collection.update_one(
                _unchanged(key, seen_replays),
                {
                    "$set": {
                        "status": DeadLetterStatus.DISCARDED.value,
                        "discard_reason": reason,
                        "discarded_by": by,
                        "discarded_at": now,
                        "updated_at": now,
                    }
                },
            )
        return result.matched_count == 1


def _typed(document: Document) -> DeadLetterDocument:
    return read_as(DeadLetterDocument, document, "dead letter")


def _unchanged(key: str, seen_replays: int) -> Document:
    # `replays` is created with the document ($setOnInsert), so $size always applies.
    return {
        "_id": key,
        "status": DeadLetterStatus.PENDING.value,
        "replays": {"$size": seen_replays},
    }
