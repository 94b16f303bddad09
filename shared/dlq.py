"""Dead-letter triage and replay: the one service behind ``gateway dlq`` and ``/v1/admin``.

:class:`DeadLetterService` lists dead letters (filters, keyset cursor), shows
one with its attempts, replays and the key's ``processed_events`` record,
replays one or every match (dry run, rate, limit), and discards one with a
reason. ``scripts/commands/dlq.py`` (the CLI) and ``gateway_api/admin.py`` (the admin
API) only translate arguments and render results; ``docs/runbook.md`` is the
operator's guide and records the decisions.

A replay, in order:

1. ``replayed`` → nothing to do (``already_replayed``); ``discarded`` →
   :class:`NotReplayable`;
2. a ``replays`` entry with no outcome whose job is still in Redis (or that
   is younger than :data:`ENQUEUE_GRACE_S`) → ``in_flight``, nothing done;
3. the key already ``succeeded`` in ``processed_events`` → the dead letter is
   closed as ``replayed`` with a ``replays`` entry ``already_succeeded`` and
   no job (``already_succeeded``);
4. otherwise one compare-and-set update appends ``{at, by, job_id, outcome:
   null}`` — only while the document is still ``pending`` with the number of
   entries this run saw, so of two concurrent replays exactly one goes on —
   then the original event is enqueued under ``job_id`` =
   ``replay/{n}/{key}`` with :class:`~shared.contracts.ReplayRef` set, which
   lets a worker claim the ``dead_lettered`` key (its attempts restart at 0).
   The worker writes the outcome. If Redis refuses the job the entry is
   closed ``enqueue_failed`` and :class:`~shared.queue.QueueUnavailable` is
   raised.

Errors::

    DeadLetterError
    ├── DeadLetterNotFound      no dead letter has that key
    ├── EventNotFound           processed_events has no such key
    ├── InvalidRequest          a filter, cursor, limit, rate or name that cannot be used
    │   └── DiscardReasonRequired
    ├── NotReplayable           discarded, or the stored event cannot be decoded
    └── NotDiscardable          already replayed, or a replay is in flight

:class:`~shared.storage.errors.StorageError` and
:class:`~shared.queue.QueueUnavailable` pass through unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Final, Self

import msgspec
import structlog
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from msgspec import Struct
from pymongo.asynchronous.database import AsyncDatabase
from redis.exceptions import RedisError

from shared.contracts import (
    CANONICAL_ADAPTERS,
    QueuedEvent,
    ReplayRef,
    decode_event,
    idempotency_key,
)
from shared.queue import Enqueuer, QueueUnavailable
from shared.storage.dead_letters import (
    DeadLetterDocument,
    DeadLetterFilter,
    DeadLetterReason,
    DeadLetters,
    DeadLetterStatus,
    PageKey,
    ReplayOutcome,
    ReplayRecord,
    Selection,
)
from shared.storage.events import (
    AttemptRecord,
    ErrorInfo,
    EventStatus,
    FailedAttempt,
    ProcessedEvent,
    ProcessedEvents,
)
from shared.storage.mongo import DEAD_LETTER_EVENTS, PROCESSED_EVENTS, SHIPMENTS, Document
from shared.storage.shipments import Shipments

__all__ = [
    "DEFAULT_PAGE_LIMIT",
    "ENQUEUE_GRACE_S",
    "MAX_PAGE_LIMIT",
    "SEARCH_LIMIT",
    "AttemptView",
    "DeadLetterDetail",
    "DeadLetterError",
    "DeadLetterFilter",
    "DeadLetterNotFound",
    "DeadLetterReason",
    "DeadLetterService",
    "DeadLetterStatus",
    "DeadLetterSummary",
    "DiscardReasonRequired",
    "DiscardResult",
    "ErrorView",
    "EventNotFound",
    "EventRecord",
    "InvalidRequest",
    "Lookup",
    "NotDiscardable",
    "NotReplayable",
    "Overview",
    "Pacer",
    "Page",
    "ReplayAction",
    "ReplayEntry",
    "ReplayFailure",
    "ReplayResult",
    "ReplaySummary",
    "SearchHit",
    "Selection",
    "SourceCounts",
    "Timeline",
    "decode_cursor",
    "encode_cursor",
    "parse_rate",
    "parse_time",
    "replay_job_id",
]

DEFAULT_PAGE_LIMIT: Final = 50
MAX_PAGE_LIMIT: Final = 500
ENQUEUE_GRACE_S: Final = 30.0
"""A ``replays`` entry without outcome this young counts as in flight even if its job is
not in Redis yet: the replaying process appends the entry first, then enqueues."""
MAX_TEXT: Final = 1000
"""Longest operator name, discard reason or filter value accepted."""

log = structlog.get_logger("shared.dlq")


# ── errors ──────────────────────────────────────────────────────────────────


class DeadLetterError(Exception):
    """Root of the dead-letter service's errors; ``code`` is a stable machine name."""

    code: ClassVar[str] = "dead_letter_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class DeadLetterNotFound(DeadLetterError):
    """No dead letter has this idempotency key."""

    code = "dead_letter_not_found"

    def __init__(self, key: str) -> None:
        super().__init__(f"no dead letter with idempotency key {key!r}")
        self.key = key


class EventNotFound(DeadLetterError):
    """``processed_events`` has no document for this idempotency key."""

    code = "event_not_found"

    def __init__(self, key: str) -> None:
        super().__init__(f"no processed event with idempotency key {key!r}")
        self.key = key


class InvalidRequest(DeadLetterError):
    """A filter, cursor, limit, rate or operator name that cannot be used."""

    code = "invalid_request"


class DiscardReasonRequired(InvalidRequest):
    """A discard without a (non-blank) reason."""

    code = "discard_reason_required"

    def __init__(self) -> None:
        super().__init__("a discard needs a reason: say why this event will never be replayed")


class NotReplayable(DeadLetterError):
    """The dead letter cannot be replayed (discarded, or its event is not decodable)."""

    code = "not_replayable"


class NotDiscardable(DeadLetterError):
    """The dead letter cannot be discarded (already replayed, or a replay is in flight)."""

    code = "not_discardable"


# ── results ─────────────────────────────────────────────────────────────────


class ErrorView(Struct, frozen=True):
    code: str
    message: str


class AttemptView(FailedAttempt, frozen=True, kw_only=True):
    """One failed attempt, with docs/contract.md §4.1's fields.

    ``{attempt, at, code, message, transient, duration_ms}``.
    """


ReplayEntry = ReplayRecord
"""One ``replays`` entry (the stored shape is the shown one)."""


class DeadLetterSummary(Struct, frozen=True, kw_only=True):
    """A dead letter as one row of a list."""

    idempotency_key: str
    source: str
    event_id: str | None
    shipment_id: str | None
    event_type: str | None
    reason: str
    error: ErrorView
    attempts: int
    dead_lettered_at: datetime
    status: str
    replays: int
    last_replay: ReplayEntry | None


class Page(Struct, frozen=True):
    """One page of a list; pass ``next_cursor`` back for the next (``None``: last page)."""

    items: list[DeadLetterSummary]
    next_cursor: str | None


class EventRecord(Struct, frozen=True, kw_only=True):
    """A key's ``processed_events`` record: where the worker pool stands with it."""

    idempotency_key: str
    status: str
    attempts: int
    last_error: ErrorView | None
    attempt_log: list[AttemptView]
    first_seen_at: datetime | None
    updated_at: datetime | None
    completed_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None
    dead_letter_status: str | None


class DeadLetterDetail(Struct, frozen=True, kw_only=True):
    """Everything about one dead letter: the event, every attempt, every replay."""

    idempotency_key: str
    source: str
    event_id: str | None
    shipment_id: str | None
    request_id: str | None
    reason: str
    error: ErrorView
    status: str
    dead_lettered_at: datetime
    created_at: datetime | None
    updated_at: datetime | None
    event: str | None
    """The courier's body exactly as received: the original JSON text (``None`` if the
    store refused to keep it; ``event_omitted`` says why)."""
    event_omitted: str | None
    attempts: list[AttemptView]
    replays: list[ReplayEntry]
    discard_reason: str | None
    discarded_by: str | None
    discarded_at: datetime | None
    processing: EventRecord | None
    """The key's ``processed_events`` record (``None`` if it has none)."""


class ReplayAction(enum.StrEnum):
    """What a replay did (or, in a dry run, would do) to one dead letter."""

    ENQUEUED = "enqueued"
    """A replay job was queued; the worker will write its outcome."""
    WOULD_ENQUEUE = "would_enqueue"
    """Dry run: a replay job would be queued."""
    ALREADY_SUCCEEDED = "already_succeeded"
    """The key had already succeeded: closed as ``replayed`` without a job (no-op)."""
    ALREADY_REPLAYED = "already_replayed"
    """The dead letter is ``replayed`` already: nothing done."""
    IN_FLIGHT = "in_flight"
    """A replay of it is queued or running (or another operator just started one)."""


class ReplayResult(Struct, frozen=True, kw_only=True):
    """What a replay did to one dead letter.

    ``warning`` is set when a job is (or would be) queued for an entry that was
    dead-lettered for a permanent error: it fails again unless its cause was fixed.
    """

    idempotency_key: str
    action: ReplayAction
    job_id: str | None
    dry_run: bool
    detail: str
    warning: str | None = None


class ReplayFailure(Struct, frozen=True, kw_only=True):
    """A dead letter a bulk replay could not replay, with the error's ``code``."""

    idempotency_key: str
    code: str
    detail: str


class ReplaySummary(Struct, kw_only=True):
    """Counts of a bulk replay (fed with :meth:`add` as results arrive)."""

    dry_run: bool
    matched: int = 0
    enqueued: int = 0
    would_enqueue: int = 0
    already_succeeded: int = 0
    already_replayed: int = 0
    in_flight: int = 0
    failed: int = 0
    failures: list[ReplayFailure] = msgspec.field(default_factory=list)

    def add(self, item: ReplayResult | ReplayFailure) -> None:
        """Count one result of :meth:`DeadLetterService.replay_matching`."""
        self.matched += 1
        if isinstance(item, ReplayFailure):
            self.failed += 1
            self.failures.append(item)
            return
        name = item.action.value
        setattr(self, name, getattr(self, name) + 1)


class DiscardResult(Struct, frozen=True, kw_only=True):
    """``already_discarded``: it was discarded before (the earlier reason is kept)."""

    idempotency_key: str
    status: str
    discard_reason: str
    discarded_by: str | None
    already_discarded: bool


# ── cursor, times, rates ────────────────────────────────────────────────────

_cursor_decoder = msgspec.json.Decoder(PageKey)


def encode_cursor(position: PageKey) -> str:
    """An opaque cursor for the position after ``position`` (URL-safe base64)."""
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode().rstrip("=")


def decode_cursor(cursor: str) -> PageKey:
    """The position a cursor from :func:`encode_cursor` stands for; :class:`InvalidRequest` if
    it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = _cursor_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise InvalidRequest(
            "cursor is not one this service returned; start again without it"
        ) from exc
    if position.dead_lettered_at.tzinfo is None:
        raise InvalidRequest("cursor is not one this service returned; start again without it")
    return position


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_time(text: str, *, now: datetime, name: str = "time") -> datetime:
    """An absolute or relative time: RFC 3339 (``2026-11-22T10:15:00Z``; without an
    offset: UTC), a date (``2026-11-22``, midnight UTC), or an age (``90s``, ``15m``,
    ``2h``, ``3d``: that long before ``now``)."""
    value = text.strip()
    relative = _RELATIVE.match(value)
    if relative:
        return now - timedelta(seconds=float(relative[1]) * _UNITS[relative[2]])
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as exc:
        raise InvalidRequest(
            f"{name}: {text!r} is not an RFC 3339 time, a date, or an age such as 2h"
        ) from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:/\s*([sm]))?$")


def parse_rate(text: str) -> float:
    """Replays per second from ``5``, ``5/s``, ``0.5/s`` or ``30/m``."""
    match = _RATE.match(text.strip())
    rate = 0.0
    if match:
        rate = float(match[1]) / (60 if match[2] == "m" else 1)
    if rate <= 0:
        raise InvalidRequest(f"rate: {text!r} is not a positive rate such as 5/s or 30/m")
    return rate


class Pacer:
    """Spaces calls to :meth:`wait` at least ``1 / rate_per_s`` apart, without bursts.

    The first call returns at once; call *k* returns no earlier than call *k-1*
    returned plus the interval. A caller that falls behind is not allowed to
    catch up. ``now`` and ``sleep`` are seams for tests.
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise InvalidRequest(f"rate must be positive, not {rate_per_s}")
        self.interval_s = 1.0 / rate_per_s
        self._now = now
        self._sleep = sleep
        self._next: float | None = None

    async def wait(self) -> None:
        """Return when the next call may start."""
        now = self._now()
        if self._next is not None and now < self._next:
            await self._sleep(self._next - now)
            now = max(self._now(), self._next)
        self._next = now + self.interval_s


def replay_job_id(key: str, number: int) -> str:
    """The arq job id of the ``number``-th replay of ``key``.

    Never a courier's key: those begin with a source id (``[a-z0-9][a-z0-9_-]*``)
    and a colon, and ``replay/…`` cannot. Not the key itself either: the original
    job's result is kept for the API's duplicate window.
    """
    return f"replay/{number}/{key}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _text(value: str, name: str) -> str:
    stripped = value.strip()
    if not stripped:
        raise InvalidRequest(f"{name} must not be empty")
    if len(stripped) > MAX_TEXT:
        raise InvalidRequest(f"{name} is longer than {MAX_TEXT} characters")
    return stripped


# ── the service ─────────────────────────────────────────────────────────────


class DeadLetterService:
    """Dead-letter operations on one gateway's MongoDB database and arq queue.

    ``redis`` and ``queue_name`` are the queue replays are enqueued to (the
    workers' queue); ``clock`` stamps ``replays`` entries and discards.
    Replays are enqueued with ``enqueuer`` when one is given (its owner closes
    it), else with an :class:`~shared.queue.Enqueuer` of the service's own,
    which keeps a Redis connection from the first replay until :meth:`aclose`
    (or the end of ``async with``).
    """

    def __init__(
        self,
        db: AsyncDatabase[Document],
        redis: ArqRedis,
        queue_name: str,
        *,
        enqueuer: Enqueuer | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._letters = DeadLetters(db)
        self._events = ProcessedEvents(db)
        self._redis = redis
        self._owns_enqueuer = enqueuer is None
        self._enqueuer = enqueuer if enqueuer is not None else Enqueuer(redis, queue_name)
        self._clock = clock

    async def aclose(self) -> None:
        """Close the service's own enqueuer (not one that was passed in)."""
        if self._owns_enqueuer:
            await self._enqueuer.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # reading

    async def list(
        self,
        selection: DeadLetterFilter,
        *,
        limit: int = DEFAULT_PAGE_LIMIT,
        cursor: str | None = None,
    ) -> Page:
        """One page of matching dead letters, newest first."""
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE_LIMIT}, not {limit}")
        after = decode_cursor(cursor) if cursor else None
        documents = await self._letters.page(selection, after=after, limit=limit + 1)
        more = len(documents) > limit
        documents = documents[:limit]
        next_cursor = None
        if more:
            last = documents[-1]
            next_cursor = encode_cursor(PageKey(last.dead_lettered_at, last.key))
        return Page([_summary(d) for d in documents], next_cursor)

    async def count(self, selection: DeadLetterFilter, *, limit: int | None = None) -> int:
        """How many dead letters match (at most ``limit``)."""
        return await self._letters.count(selection, limit=limit)

    async def show(self, key: str) -> DeadLetterDetail:
        """One dead letter in full, with its key's ``processed_events`` record."""
        document = await self._letters.get(key)
        if document is None:
            raise DeadLetterNotFound(key)
        record = await self._events.get(key)
        return _detail(document, None if record is None else _event_record(record, document))

    async def event(self, key: str) -> EventRecord:
        """The key's ``processed_events`` record: status, attempts, last error."""
        record = await self._events.get(key)
        if record is None:
            raise EventNotFound(key)
        letter = await self._letters.get(key)
        return _event_record(record, letter)

    # replaying

    async def replay(self, key: str, *, by: str, dry_run: bool = False) -> ReplayResult:
        """Replay one dead letter (see the module docstring for the steps)."""
        by = _text(by, "by")
        document = await self._letters.get(key)
        if document is None:
            raise DeadLetterNotFound(key)
        return await self._replay(document, by=by, dry_run=dry_run)

    async def replay_matching(
        self,
        selection: DeadLetterFilter,
        *,
        by: str,
        limit: int | None = None,
        dry_run: bool = False,
        pacer: Pacer | None = None,
    ) -> AsyncIterator[ReplayResult | ReplayFailure]:
        """Replay every ``pending`` dead letter that matches, newest first; yield each result.

        Only ``pending`` entries are replayable, so ``selection.status`` must be
        ``None`` or ``pending``. Reads one page at a time; at most ``limit``
        entries. ``pacer`` spaces the replays (not the dry run). A dead letter
        that cannot be replayed is yielded as a :class:`ReplayFailure`; an
        unreachable MongoDB or Redis ends the run with that error (entries not
        reached yet stay ``pending``).
        """
        by = _text(by, "by")
        selection = _pending_only(selection)
        if limit is not None and limit < 1:
            raise InvalidRequest(f"limit must be at least 1, not {limit}")
        async for document in self._letters.iterate(selection, limit=limit):
            if pacer is not None and not dry_run:
                await pacer.wait()
            try:
                yield await self._replay(document, by=by, dry_run=dry_run)
            except (NotReplayable, DeadLetterNotFound) as exc:
                yield ReplayFailure(idempotency_key=document.key, code=exc.code, detail=exc.detail)

    async def count_replayable(
        self, selection: DeadLetterFilter, *, limit: int | None = None
    ) -> int:
        """How many entries :meth:`replay_matching` would visit."""
        return await self._letters.count(_pending_only(selection), limit=limit)

    async def _replay(
        self, document: DeadLetterDocument, *, by: str, dry_run: bool
    ) -> ReplayResult:
        key = document.key
        status = document.status
        if status == DeadLetterStatus.DISCARDED:
            raise NotReplayable(
                f"{key} was discarded ({document.discard_reason!r}); "
                "a discarded dead letter is never replayed"
            )
        if status == DeadLetterStatus.REPLAYED:
            return _result(
                key, ReplayAction.ALREADY_REPLAYED, dry_run, "already replayed; nothing to do"
            )
        live = await self._live_replay(document)
        if live is not None:
            return _result(
                key,
                ReplayAction.IN_FLIGHT,
                dry_run,
                "a replay of it is queued or running; wait for its outcome",
                job_id=live,
            )
        seen = len(document.replays)
        now = self._clock()
        if await self._events.status(key) is EventStatus.SUCCEEDED:
            detail = "the event already succeeded: marked replayed, no job queued"
            if dry_run:
                detail = "the event already succeeded: would be marked replayed, no job queued"
            else:
                entry = _entry(now, by, None, ReplayOutcome.ALREADY_SUCCEEDED)
                if not await self._letters.close_as_replayed(
                    key, seen_replays=seen, entry=entry, now=now
                ):
                    return await self._lost_race(key, dry_run)
                log.info("dlq.replay_not_needed", idempotency_key=key, by=by)
            return _result(key, ReplayAction.ALREADY_SUCCEEDED, dry_run, detail)
        queued = _queued_event(document, by=by, now=now)
        job_id = replay_job_id(key, seen + 1)
        warning = _permanent_warning(document)
        if dry_run:
            return _result(
                key,
                ReplayAction.WOULD_ENQUEUE,
                dry_run,
                "a replay job would be queued",
                warning=warning,
            )
        entry = _entry(now, by, job_id, None)
        if not await self._letters.begin_replay(key, seen_replays=seen, entry=entry, now=now):
            return await self._lost_race(key, dry_run)
        try:
            stored = await self._enqueuer.enqueue(job_id, queued)
        except QueueUnavailable:
            await self._letters.abandon_replay(key, job_id=job_id, now=self._clock())
            log.warning("dlq.replay_not_queued", idempotency_key=key, job_id=job_id, by=by)
            raise
        if not stored:
            # Only possible if an earlier enqueue of this id reported a failure yet
            # reached Redis: that job is the replay, and it writes this entry's outcome.
            log.warning("dlq.replay_job_existed", idempotency_key=key, job_id=job_id)
        log.info("dlq.replay_enqueued", idempotency_key=key, job_id=job_id, by=by)
        return _result(
            key,
            ReplayAction.ENQUEUED,
            dry_run,
            "replay job queued",
            job_id=job_id,
            warning=warning,
        )

    async def _live_replay(self, document: DeadLetterDocument) -> str | None:
        """The job id of a replay still in flight, if any.

        In flight: an entry without outcome whose job is queued or running in
        Redis, or younger than :data:`ENQUEUE_GRACE_S`. An older entry whose
        job is gone was lost (e.g. a Redis crash); it no longer blocks a replay.
        """
        now = self._clock()
        for entry in reversed(document.replays):
            job_id = entry.job_id
            if entry.outcome is not None or not job_id:
                continue
            at = entry.at
            if at is not None and (now - at).total_seconds() < ENQUEUE_GRACE_S:
                return str(job_id)
            try:
                found = await self._redis.exists(
                    job_key_prefix + job_id, in_progress_key_prefix + job_id
                )
            except (RedisError, OSError) as exc:
                raise QueueUnavailable(
                    f"redis did not answer whether replay job {job_id} is queued: "
                    f"{type(exc).__name__}"
                ) from exc
            if found:
                return str(job_id)
        return None

    async def _lost_race(self, key: str, dry_run: bool) -> ReplayResult:
        """Another operator changed the document between our read and our write."""
        document = await self._letters.get(key)
        if document is None:
            raise DeadLetterNotFound(key)
        if document.status == DeadLetterStatus.DISCARDED:
            raise NotReplayable(f"{key} was discarded meanwhile")
        if document.status == DeadLetterStatus.REPLAYED:
            return _result(
                key, ReplayAction.ALREADY_REPLAYED, dry_run, "already replayed; nothing to do"
            )
        return _result(
            key,
            ReplayAction.IN_FLIGHT,
            dry_run,
            "another replay started at the same time",
            job_id=document.replays[-1].job_id if document.replays else None,
        )

    # discarding

    async def discard(self, key: str, *, by: str, reason: str | None) -> DiscardResult:
        """Mark a ``pending`` dead letter ``discarded``: it will never be replayed."""
        if reason is None or not reason.strip():
            raise DiscardReasonRequired
        reason = _text(reason, "reason")
        by = _text(by, "by")
        for _ in range(2):
            document = await self._letters.get(key)
            if document is None:
                raise DeadLetterNotFound(key)
            status = document.status
            if status == DeadLetterStatus.DISCARDED:
                return DiscardResult(
                    idempotency_key=key,
                    status=DeadLetterStatus.DISCARDED.value,
                    discard_reason=str(document.discard_reason),
                    discarded_by=document.discarded_by,
                    already_discarded=True,
                )
            if status == DeadLetterStatus.REPLAYED:
                raise NotDiscardable(f"{key} was replayed successfully; nothing to discard")
            live = await self._live_replay(document)
            if live is not None:
                raise NotDiscardable(
                    f"a replay of {key} is in flight (job {live}); wait for its outcome"
                )
            seen = len(document.replays)
            if await self._letters.discard(
                key, seen_replays=seen, by=by, reason=reason, now=self._clock()
            ):
                log.info("dlq.discarded", idempotency_key=key, by=by, reason=reason)
                return DiscardResult(
                    idempotency_key=key,
                    status=DeadLetterStatus.DISCARDED.value,
                    discard_reason=reason,
                    discarded_by=by,
                    already_discarded=False,
                )
        raise NotDiscardable(f"{key} keeps changing (replays in progress); try again")


# ── document → view ─────────────────────────────────────────────────────────


def _pending_only(selection: DeadLetterFilter) -> DeadLetterFilter:
    if selection.status not in (None, DeadLetterStatus.PENDING):
        raise InvalidRequest(
            f"only pending dead letters can be replayed, not status={selection.status}"
        )
    return msgspec.structs.replace(selection, status=DeadLetterStatus.PENDING)


def _entry(now: datetime, by: str, job_id: str | None, outcome: ReplayOutcome | None) -> Document:
    return {
        "at": now,
        "by": by,
        "job_id": job_id,
        "outcome": None if outcome is None else outcome.value,
    }


def _result(
    key: str,
    action: ReplayAction,
    dry_run: bool,
    detail: str,
    *,
    job_id: str | None = None,
    warning: str | None = None,
) -> ReplayResult:
    return ReplayResult(
        idempotency_key=key,
        action=action,
        job_id=job_id,
        dry_run=dry_run,
        detail=detail,
        warning=warning,
    )


def _permanent_warning(document: DeadLetterDocument) -> str | None:
    if document.reason != DeadLetterReason.PERMANENT:
        return None
    code = document.error.code
    return f"dead-lettered for a permanent error ({code}): fails again unless its cause was fixed"


def _queued_event(document: DeadLetterDocument, *, by: str, now: datetime) -> QueuedEvent:
    key = document.key
    at_ms = int(now.timestamp() * 1000)
    try:
        # The courier's request id, so one search finds the original run and the replay.
        queued = document.queued_event(
            replay=ReplayRef(by=by, at_ms=at_ms), request_id=f"replay_{uuid.uuid4().hex}"
        )
    except ValueError as exc:
        raise NotReplayable(f"{key} keeps no event to replay ({exc}); discard it") from exc
    if queued.adapter not in CANONICAL_ADAPTERS:
        # A carrier's body: the worker normalises it with the source's current
        # configuration (docs/contract.md §3.4), which is what a replay is for.
        return queued
    try:
        event = decode_event(queued.body)
    except msgspec.DecodeError as exc:
        raise NotReplayable(
            f"the stored event of {key} is not a valid courier event ({exc}); discard it"
        ) from exc
    if idempotency_key(document.source, event.event_id) != key:
        raise NotReplayable(f"the stored event of {key} does not belong to that key; discard it")
    return queued


def _error(value: ErrorInfo | None) -> ErrorView:
    return ErrorView("unknown", "") if value is None else ErrorView(value.code, value.message)


def _copied[S: Struct](kind: type[S], source: Struct, **values: object) -> S:
    """A ``kind`` of ``values``; its other fields are ``source``'s fields of the same name."""
    fields = (field.name for field in msgspec.structs.fields(kind))
    copied = {name: getattr(source, name) for name in fields if name not in values}
    return kind(**copied, **values)


def _attempts(values: tuple[AttemptRecord, ...]) -> list[AttemptView]:
    return [_copied(AttemptView, attempt) for attempt in values]


def _summary(document: DeadLetterDocument) -> DeadLetterSummary:
    replays = list(document.replays)
    return _copied(
        DeadLetterSummary,
        document,
        idempotency_key=document.key,
        event_type=document.event_type or _legacy_event_type(document),
        error=_error(document.error),
        attempts=len(document.attempts),
        replays=len(replays),
        last_replay=replays[-1] if replays else None,
    )


def _legacy_event_type(document: DeadLetterDocument) -> str | None:
    # Dead letters written before bodies were opaque hold the event as a sub-document.
    event = document.event
    value = event.get("event_type") if isinstance(event, Mapping) else None
    return value if isinstance(value, str) else None


def _detail(document: DeadLetterDocument, record: EventRecord | None) -> DeadLetterDetail:
    return _copied(
        DeadLetterDetail,
        document,
        idempotency_key=document.key,
        error=_error(document.error),
        event=document.event_json,
        attempts=_attempts(document.attempts),
        replays=list(document.replays),
        processing=record,
    )


def _event_record(record: ProcessedEvent, letter: DeadLetterDocument | None) -> EventRecord:
    return _copied(
        EventRecord,
        record,
        idempotency_key=record.key,
        status=record.status.value,
        last_error=None if record.last_error is None else _error(record.last_error),
        attempt_log=_attempts(record.attempt_log),
        dead_letter_status=None if letter is None else letter.status,
    )


# ── the console's reads (docs/contract.md §3.5) ──────────────────────────────


class SearchHit(Struct, frozen=True, kw_only=True):
    """One answer of :meth:`Lookup.search`: what matched, and the page it leads to."""

    kind: str
    """``event`` or ``shipment``."""
    matched: str
    """The field that matched: ``idempotency_key``, ``event_id``, ``shipment_id`` or
    ``tracking_number``."""
    idempotency_key: str | None = None
    source: str | None = None
    shipment_id: str | None = None
    status: str | None = None


class Timeline(Struct, frozen=True, kw_only=True):
    """Everything the console shows about one key."""

    record: EventRecord
    success_duration_ms: int | None
    body: str | None
    """The courier's body as received (UTF-8 text; ``None`` if not kept)."""
    shipment_id: str | None
    dead_letter: DeadLetterDetail | None


class SourceCounts(Struct, kw_only=True):
    """One source's keys touched since the overview's start."""

    source: str
    accepted: int = 0
    """Keys first seen in the window (a duplicate never creates one)."""
    succeeded: int = 0
    retried: int = 0
    """Keys with a failed attempt that was tried again."""
    dead_lettered: int = 0
    in_flight: int = 0


class Overview(Struct, frozen=True, kw_only=True):
    since: datetime
    sources: list[SourceCounts]
    pending_by_code: dict[str, int]
    queue_depth: int


SEARCH_LIMIT: Final = 50


class Lookup:
    """The console's reads over the same collections as :class:`DeadLetterService`.

    Every query is served by an index of :mod:`shared.storage.indexes`.
    """

    def __init__(self, db: AsyncDatabase[Document], redis: ArqRedis, queue_name: str) -> None:
        self._db = db
        self._events = ProcessedEvents(db)
        self._letters = DeadLetters(db)
        self._redis = redis
        self._queue_name = queue_name

    async def search(self, text: str) -> list[SearchHit]:
        """Keys and shipments whose idempotency key, event id, shipment id or tracking
        number is exactly ``text``."""
        text = text.strip()
        if not text:
            return []
        text = _text(text, "q")
        hits: list[SearchHit] = []
        events = self._db[PROCESSED_EVENTS]
        seen: set[str] = set()
        async for doc in events.find(
            {"$or": [{"_id": text}, {"event_id": text}]},
            {"source": True, "event_id": True, "status": True},
        ).limit(SEARCH_LIMIT):
            seen.add(doc["_id"])
            hits.append(
                SearchHit(
                    kind="event",
                    matched="idempotency_key" if doc["_id"] == text else "event_id",
                    idempotency_key=doc["_id"],
                    source=doc.get("source"),
                    status=doc.get("status"),
                )
            )
        async for doc in (
            self._db[SHIPMENTS]
            .find(
                {"$or": [{"shipment_id": text}, {"tracking_number": text}]},
                {"source": True, "shipment_id": True, "tracking_number": True, "status": True},
            )
            .limit(SEARCH_LIMIT)
        ):
            hits.append(
                SearchHit(
                    kind="shipment",
                    matched="shipment_id" if doc.get("shipment_id") == text else "tracking_number",
                    source=doc.get("source"),
                    shipment_id=doc.get("shipment_id"),
                    status=doc.get("status"),
                )
            )
        if text not in seen:
            letter = await self._letters.get(text)
            if letter is not None:
                hits.append(
                    SearchHit(
                        kind="event",
                        matched="idempotency_key",
                        idempotency_key=letter.key,
                        source=letter.source,
                        status="dead_lettered",
                    )
                )
        return hits

    async def timeline(self, key: str) -> Timeline:
        """The key's record, attempts, body and dead letter (raises :class:`EventNotFound`)."""
        record = await self._events.get(key)
        letter = await self._letters.get(key)
        if record is None and letter is None:
            if not await self._queued(key):
                raise EventNotFound(key)
            return Timeline(
                record=EventRecord(
                    idempotency_key=key,
                    status="queued",
                    attempts=0,
                    last_error=None,
                    attempt_log=[],
                    first_seen_at=None,
                    updated_at=None,
                    completed_at=None,
                    lease_owner=None,
                    lease_until=None,
                    dead_letter_status=None,
                ),
                success_duration_ms=None,
                body=None,
                shipment_id=None,
                dead_letter=None,
            )
        detail = None if letter is None else _detail(letter, None)
        body = record.body if record is not None and record.body is not None else None
        if body is None and letter is not None:
            body = letter.body
        shipment_id = None if letter is None else letter.shipment_id
        if shipment_id is None and body is not None:
            try:
                shipment_id = decode_event(body).shipment.id
            except (msgspec.DecodeError, msgspec.ValidationError):
                shipment_id = None
        if record is None:
            assert letter is not None
            view = EventRecord(
                idempotency_key=key,
                status="dead_lettered",
                attempts=len(letter.attempts),
                last_error=_error(letter.error),
                attempt_log=_attempts(letter.attempts),
                first_seen_at=letter.created_at,
                updated_at=letter.updated_at,
                completed_at=letter.dead_lettered_at,
                lease_owner=None,
                lease_until=None,
                dead_letter_status=letter.status,
            )
        else:
            view = _event_record(record, letter)
        return Timeline(
            record=view,
            success_duration_ms=None if record is None else record.success_duration_ms,
            body=None if body is None else body.decode(errors="replace"),
            shipment_id=shipment_id,
            dead_letter=detail,
        )

    async def _queued(self, key: str) -> bool:
        """Accepted and waiting for a worker: its arq job exists (job id = key)."""
        try:
            return bool(await self._redis.exists(job_key_prefix + key))
        except RedisError:
            return False

    async def shipment(self, source: str, shipment_id: str) -> Document | None:
        """The ``active_shipments`` document (status and history), or ``None``."""
        return await Shipments(self._db).get(source, shipment_id)

    async def overview(self, *, since: datetime) -> Overview:
        """Per source since ``since``; pending dead letters by code; queue depth."""
        statuses = [status.value for status in EventStatus]
        _retry_floor = {"$cond": [{"$eq": ["$status", EventStatus.DEAD_LETTERED.value]}, 1, 0]}
        counts: dict[str, SourceCounts] = {}
        # Served by processed_events' (status, updated_at) index.
        pipeline: list[Document] = [
            {"$match": {"status": {"$in": statuses}, "updated_at": {"$gte": since}}},
            {
                "$group": {
                    "_id": {"source": "$source", "status": "$status"},
                    "keys": {"$sum": 1},
                    # Retried: a failed attempt that was followed by another one (a
                    # dead-lettered key's last failed attempt was not retried).
                    "retried": {"$sum": {"$cond": [{"$gt": ["$attempts", _retry_floor]}, 1, 0]}},
                    "new": {"$sum": {"$cond": [{"$gte": ["$first_seen_at", since]}, 1, 0]}},
                }
            },
        ]
        cursor = await self._db[PROCESSED_EVENTS].aggregate(pipeline)
        async for row in cursor:
            source = str(row["_id"].get("source") or "?")
            entry = counts.setdefault(source, SourceCounts(source=source))
            entry.accepted += int(row["new"])
            entry.retried += int(row["retried"])
            match row["_id"].get("status"):
                case EventStatus.SUCCEEDED:
                    entry.succeeded += int(row["keys"])
                case EventStatus.DEAD_LETTERED:
                    entry.dead_lettered += int(row["keys"])
                case _:
                    entry.in_flight += int(row["keys"])
        by_code: dict[str, int] = {}
        # Covered by dead_letter_events' (status, error.code) index.
        letters = await self._db[DEAD_LETTER_EVENTS].aggregate(
            [
                {"$match": {"status": DeadLetterStatus.PENDING.value}},
                {"$group": {"_id": "$error.code", "n": {"$sum": 1}}},
            ]
        )
        async for row in letters:
            by_code[str(row["_id"])] = int(row["n"])
        try:
            depth = int(await self._redis.zcard(self._queue_name))
        except RedisError:
            depth = -1
        return Overview(
            since=since,
            sources=sorted(counts.values(), key=lambda entry: entry.source),
            pending_by_code=dict(sorted(by_code.items(), key=lambda item: -item[1])),
            queue_depth=depth,
        )
