"""``active_shipments``: the projection of each shipment's newest known state.

:meth:`Shipments.apply_event` is one ``findAndModify`` whose aggregation
pipeline decides on the server, atomically with the write, what an event does
to its shipment (docs/contract.md §3.3, §4.1). The pipeline is the only place
the rules live. Its first stage writes the verdict into the document's
``last_apply`` field; the second acts on that verdict; the third records it
with the status it left (``{event_id, outcome, status}``) in ``last_apply``
(overwritten by every apply) and at the end of ``recent_applies`` (newest last,
at most :data:`RECENT_APPLIES_LIMIT`). :meth:`Shipments.apply_event` reads the
verdict from the returned post-image's ``last_apply``;
:meth:`Shipments.apply_many` runs the same pipeline for a batch in one
``bulk_write`` and reads every verdict from ``recent_applies`` (one batch may
hold several events of one shipment, so the last verdict alone is not enough).
Both fields are that return channel, not the shipment's state:
:meth:`Shipments.get` leaves them out. Rules, first match wins:

1. no stored shipment → ``applied`` (the event creates it);
2. the event is already in the shipment's history → ``already_applied``;
3. ``shipment.order_id`` differs from the stored one → ``order_mismatch``
   (only when both are known: a carrier event without an order id, whose
   ``order_id`` is empty, and a shipment stored without one skip this rule,
   docs/contract.md §3.4);
4. stored status terminal, event not older than ``last_event_at``, and a
   different status → ``invalid_transition``;
5. event older than ``last_event_at`` → ``recorded_stale``;
6. otherwise → ``applied``.

``applied`` and ``recorded_stale`` append the event to ``history`` (newest
last, at most :data:`HISTORY_LIMIT`) and set ``updated_at``; ``applied`` also
sets ``status``, ``last_event_id``, ``last_event_at`` and (when the event
carries one) ``tracking_number``. The other outcomes change nothing
(but ``last_apply`` and ``recent_applies``).

"Not older" means ``occurred_at >= last_event_at``: of two events with the same
time, the one applied later wins. Times compare at millisecond precision, as
BSON stores them.

Why the verdict is stored rather than recomputed: one round trip cannot return
both the document before the write and a computed value, and a projection
evaluated on the returned document is not reapplied when a retryable write is
answered from the oplog; a field of the post-image is. A ``bulk_write``
returns no document at all, only counts: the batch's verdicts can only be read
back, and only what the pipeline itself stored says what each event did (the
status right after it included), whatever other writers did since.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from msgspec import Struct
from pymongo import UpdateOne

from shared.contracts import TERMINAL_STATUSES, CourierEvent
from shared.storage.errors import StoreRejected
from shared.storage.mongo import SHIPMENTS, Collection, Document, literal, translate_errors

__all__ = [
    "HISTORY_LIMIT",
    "RECENT_APPLIES_LIMIT",
    "Decision",
    "Outcome",
    "Shipments",
    "decisions_of",
    "shipment_key",
]

HISTORY_LIMIT: Final = 50
"""Most recent applied events kept in a shipment's ``history``."""
RECENT_APPLIES_LIMIT: Final = 32
"""Most recent verdicts kept in a shipment's ``recent_applies``.

Well above a batch's events of one shipment, and below :data:`HISTORY_LIMIT`: every
apply that moves an event out of ``history`` also moves a verdict out of
``recent_applies``, so an event whose verdict is gone may still be in ``history``,
where applying it again finds it (``already_applied``) — only 50 history-changing
applies later does a second apply no longer recognise it."""
_DECIDED_FIELDS: Final = {"status": True, "last_apply": True}
_VERDICT_FIELDS: Final = ("last_apply", "recent_applies")
"""Apply's return channel, not the shipment's state: :meth:`Shipments.get` leaves them out."""


class Outcome(enum.StrEnum):
    """What applying one event to one shipment did (the rules above)."""

    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"
    RECORDED_STALE = "recorded_stale"
    INVALID_TRANSITION = "invalid_transition"
    ORDER_MISMATCH = "order_mismatch"

    @property
    def changes_history(self) -> bool:
        """Whether the event is appended to the shipment's history."""
        return self in (Outcome.APPLIED, Outcome.RECORDED_STALE)


class Decision(Struct, frozen=True):
    """The outcome and the shipment's status after it."""

    outcome: Outcome
    status: str


def shipment_key(source: str, shipment_id: str) -> str:
    """``_id`` of a shipment's document: ``{source}:{shipment.id}``."""
    return f"{source}:{shipment_id}"


class Shipments(Collection):
    """Domain operations on ``active_shipments``."""

    collection_name = SHIPMENTS

    async def apply_event(self, source: str, event: CourierEvent, *, now: datetime) -> Decision:
        """Apply ``event`` as the rules decide; the outcome and the status after it.

        One round trip. Running it twice for one event changes nothing the
        second time (``already_applied``), so a crash between this step and
        the next is harmless.
        """
        query = {"_id": shipment_key(source, event.shipment.id)}
        pipeline = _apply_pipeline(source, event, now)
        # Two first events of one shipment may both try to insert; the loser
        # retries once and then finds the document (real MongoDB retries this
        # upsert itself; not every wire-compatible server does).
        for _ in range(2):
            after = await self._upsert("apply_event", query, pipeline, _DECIDED_FIELDS)
            if after is not None:
                return Decision(Outcome(after["last_apply"]["outcome"]), after["status"])
        raise StoreRejected("apply_event: the shipment's upsert lost the race for its _id twice")

    async def apply_many(
        self, items: Sequence[tuple[str, CourierEvent]], *, now: datetime
    ) -> list[Decision | None]:
        """:meth:`apply_event` for each ``(source, event)``, in order, in two round trips.

        One ordered ``bulk_write`` of the same pipeline updates (events of one
        shipment are applied in the given order), then one read of the shipments'
        ``recent_applies``. Decision ``i`` is that event's verdict and the status
        right after it; ``None`` where the verdict is not known: the bulk stopped
        at a write error (a duplicate-key race of two first inserts) before or at
        item ``i``, or other applies of the shipment pushed the verdict out. Applying
        those again with :meth:`apply_event` is safe: an event still in the
        shipment's history is ``already_applied``, and one the rules refused
        (never in history) is decided again and refused again or applied. Any
        other failure raises the translated :class:`StorageError`.
        """
        if not items:
            return []
        keys = [shipment_key(source, event.shipment.id) for source, event in items]
        writes = [
            UpdateOne({"_id": key}, _apply_pipeline(source, event, now), upsert=True)
            for key, (source, event) in zip(keys, items, strict=True)
        ]
        written = await self._bulk_write("apply_many", writes, ordered=True)
        # Ordered: the first write error stopped the bulk there; nothing after it ran.
        ran = min(written.write_errors, default=len(items))
        with translate_errors("apply_many.read"):
            found = {
                document["_id"]: document.get("recent_applies") or []
                async for document in self._collection.find(
                    {"_id": {"$in": sorted(set(keys[:ran]))}}, {"recent_applies": True}
                )
            }
        events = [(key, event.event_id) for key, (_, event) in zip(keys, items, strict=True)]
        return decisions_of(events[:ran], found) + [None] * (len(items) - ran)

    async def get(self, source: str, shipment_id: str) -> Document | None:
        """The shipment's document (without ``last_apply`` and ``recent_applies``), or ``None``."""
        with translate_errors("get_shipment"):
            return await self._collection.find_one(
                {"_id": shipment_key(source, shipment_id)},
                projection=dict.fromkeys(_VERDICT_FIELDS, False),
            )


def decisions_of(
    applied: Sequence[tuple[str, str]], recent: Mapping[str, Sequence[Document]]
) -> list[Decision | None]:
    """The decision of each applied ``(shipment key, event id)``, read from the shipments'
    ``recent_applies`` (newest last) as they are after those applies.

    The ``n`` applies of one event to one shipment (in this order) are that event's
    ``n`` newest entries there, in order; an apply whose entry is gone (pushed out
    by newer ones) is ``None``, never a guess.
    """
    positions: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    for index, pair in enumerate(applied):
        positions[pair].append(index)
    decided: list[Decision | None] = [None] * len(applied)
    for (key, event_id), indexes in positions.items():
        entries = [entry for entry in recent.get(key, ()) if entry.get("event_id") == event_id]
        newest = entries[-len(indexes) :]
        for index, entry in zip(indexes[len(indexes) - len(newest) :], newest, strict=True):
            decided[index] = Decision(Outcome(entry["outcome"]), entry["status"])
    return decided


def _order_id(event: CourierEvent) -> str | None:
    """The event's order id; ``None`` for a carrier event that sent none (empty)."""
    return event.shipment.order_id or None


def _verdict(event: CourierEvent) -> Document:
    """The rules, in order, as one ``$switch`` over the stored document."""
    status = literal(event.event_type.status)
    occurred_at = event.occurred_at
    order_id = _order_id(event)
    # Numbered as in the module docstring; rule 6 is the default.
    rules: list[tuple[Document, Outcome]] = [
        # 1. no stored shipment (the upsert starts from {_id})
        ({"$eq": [{"$ifNull": ["$status", None]}, None]}, Outcome.APPLIED),
        # 2. already in history
        (
            {"$in": [literal(event.event_id), {"$ifNull": ["$history.event_id", []]}]},
            Outcome.ALREADY_APPLIED,
        ),
        # 3. another order (both known)
        *(
            []
            if order_id is None
            else [
                (
                    {
                        "$and": [
                            {"$ne": [{"$ifNull": ["$order_id", None]}, None]},
                            {"$ne": ["$order_id", literal(order_id)]},
                        ]
                    },
                    Outcome.ORDER_MISMATCH,
                )
            ]
        ),
        # 4. terminal, not older, another status
        (
            {
                "$and": [
                    {"$in": ["$status", sorted(TERMINAL_STATUSES)]},
                    {"$gte": [occurred_at, "$last_event_at"]},
                    {"$ne": ["$status", status]},
                ]
            },
            Outcome.INVALID_TRANSITION,
        ),
        # 5. older
        ({"$lt": [occurred_at, "$last_event_at"]}, Outcome.RECORDED_STALE),
    ]
    branches = [{"case": case, "then": outcome.value} for case, outcome in rules]
    return {"$switch": {"branches": branches, "default": Outcome.APPLIED.value}}


def _apply_pipeline(source: str, event: CourierEvent, now: datetime) -> list[Document]:
    status = event.event_type.status
    outcome = "$last_apply.outcome"
    moves = {"$eq": [outcome, Outcome.APPLIED.value]}
    recorded = {"$in": [outcome, [o.value for o in Outcome if o.changes_history]]}

    def when_moves(value: object, field: str) -> Document:
        return {"$cond": [moves, value, "$" + field]}

    tracking: object = (
        literal(event.shipment.tracking_number)
        if event.shipment.tracking_number is not None
        else {"$ifNull": ["$tracking_number", None]}
    )
    entry = {
        "event_id": literal(event.event_id),
        "status": literal(status),
        "occurred_at": event.occurred_at,
        "applied_at": now,
    }
    history = {
        "$slice": [{"$concatArrays": [{"$ifNull": ["$history", []]}, [entry]]}, -HISTORY_LIMIT]
    }
    write: dict[str, Any] = {
        "source": {"$ifNull": ["$source", literal(source)]},
        "shipment_id": {"$ifNull": ["$shipment_id", literal(event.shipment.id)]},
        "order_id": {"$ifNull": ["$order_id", literal(_order_id(event))]},
        "tracking_number": {"$cond": [moves, tracking, {"$ifNull": ["$tracking_number", None]}]},
        "status": when_moves(literal(status), "status"),
        "last_event_id": when_moves(literal(event.event_id), "last_event_id"),
        "last_event_at": when_moves(event.occurred_at, "last_event_at"),
        "history": {"$cond": [recorded, history, "$history"]},
        "created_at": {"$ifNull": ["$created_at", now]},
        "updated_at": {"$cond": [recorded, now, "$updated_at"]},
    }
    # Stage 1 decides from the stored document; stage 2 sees the verdict; stage 3
    # records it with the status it left, in `last_apply` and in `recent_applies`.
    verdict = {"event_id": literal(event.event_id), "outcome": _verdict(event)}
    decided = {
        "event_id": literal(event.event_id),
        "outcome": "$last_apply.outcome",
        "status": "$status",
    }
    recent = {
        "$slice": [
            {"$concatArrays": [{"$ifNull": ["$recent_applies", []]}, [decided]]},
            -RECENT_APPLIES_LIMIT,
        ]
    }
    return [
        {"$set": {"last_apply": verdict}},
        {"$set": write},
        {"$set": {"last_apply": decided, "recent_applies": recent}},
    ]
