"""``active_shipments``: the projection of each shipment's newest known state.

:meth:`Shipments.apply_event` is one ``findAndModify`` whose aggregation
pipeline decides on the server, atomically with the write, whether an event
changes the document (SPEC §3.3, §4.1):

* already in ``history`` (by ``event_id``) → unchanged;
* ``order_id`` differs from the stored one → unchanged;
* stored status terminal, event not older, and a different status → unchanged;
* otherwise the event is appended to ``history`` (newest last, at most
  :data:`HISTORY_LIMIT`), and if it is not older than ``last_event_at`` (or the
  shipment is new) it also sets ``status``, ``last_event_id``,
  ``last_event_at``, ``order_id`` and ``tracking_number``.

It returns the document as it was *before* the write, so the caller can name
the outcome with the pure state machine (``gateway_worker.state_machine``),
which is the specification these rules implement; a parity test holds the two
together.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from msgspec import Struct
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.contracts import TERMINAL_STATUSES, CourierEvent
from shared.storage.mongo import SHIPMENTS, Document, translate_errors

__all__ = ["HISTORY_LIMIT", "ShipmentState", "Shipments", "shipment_key"]

HISTORY_LIMIT: Final = 50
"""Most recent applied events kept in a shipment's ``history``."""

# Temporary fields of the update pipeline, removed in its last stage.
_NEW = "_apply_new"
_SEEN = "_apply_seen"
_OK = "_apply_ok"
_NEWER = "_apply_newer"


class ShipmentState(Struct, frozen=True, kw_only=True):
    """What the state machine needs to know about a stored shipment."""

    status: str
    order_id: str
    last_event_at: datetime
    event_ids: frozenset[str]


def shipment_key(source: str, shipment_id: str) -> str:
    """``_id`` of a shipment's document: ``{source}:{shipment.id}``."""
    return f"{source}:{shipment_id}"


class Shipments:
    """Domain operations on ``active_shipments``."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._collection: AsyncCollection[Document] = db[SHIPMENTS]

    async def apply_event(
        self, source: str, event: CourierEvent, *, now: datetime
    ) -> ShipmentState | None:
        """Apply ``event`` if the rules allow; return the state before (``None``: new shipment).

        One round trip. Running it twice for one event changes nothing the
        second time, so a crash between this step and the next is harmless.
        """
        query = {"_id": shipment_key(source, event.shipment.id)}
        pipeline = _apply_pipeline(source, event, now)
        projection = {"status": True, "order_id": True, "last_event_at": True, "history": True}
        # Two first events of one shipment may both try to insert; the loser
        # retries once and then finds the document (real MongoDB retries this
        # upsert itself; not every wire-compatible server does).
        for attempt in range(2):
            with translate_errors("apply_event"):
                try:
                    before = await self._collection.find_one_and_update(
                        query,
                        pipeline,
                        projection=projection,
                        upsert=True,
                        return_document=ReturnDocument.BEFORE,
                    )
                except DuplicateKeyError:
                    if attempt == 1:
                        raise
                    continue
            return None if before is None else _state(before)
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, source: str, shipment_id: str) -> Document | None:
        """The shipment's document, or ``None``."""
        with translate_errors("get_shipment"):
            return await self._collection.find_one({"_id": shipment_key(source, shipment_id)})


def _state(document: Document) -> ShipmentState:
    return ShipmentState(
        status=document["status"],
        order_id=document["order_id"],
        last_event_at=document["last_event_at"],
        event_ids=frozenset(entry["event_id"] for entry in document.get("history", ())),
    )


def _literal(value: object) -> Document:
    # Courier strings may start with "$", which a pipeline would read as a field path.
    return {"$literal": value}


def _field(name: str) -> str:
    return "$" + name


def _apply_pipeline(source: str, event: CourierEvent, now: datetime) -> list[Document]:
    status = event.event_type.status
    occurred_at = event.occurred_at
    entry = {
        "event_id": _literal(event.event_id),
        "status": _literal(status),
        "occurred_at": occurred_at,
        "applied_at": now,
    }
    decide: dict[str, Any] = {
        _NEW: {"$eq": [{"$ifNull": ["$status", None]}, None]},
        _SEEN: {"$in": [_literal(event.event_id), {"$ifNull": ["$history.event_id", []]}]},
    }
    not_older = {"$or": [_field(_NEW), {"$gte": [occurred_at, "$last_event_at"]}]}
    terminal = {"$in": ["$status", sorted(TERMINAL_STATUSES)]}
    allowed = {
        "$and": [
            {"$eq": [_field(_SEEN), False]},
            {
                "$or": [
                    _field(_NEW),
                    {
                        "$and": [
                            {"$eq": ["$order_id", _literal(event.shipment.order_id)]},
                            {
                                "$or": [
                                    {"$eq": [terminal, False]},
                                    {"$lt": [occurred_at, "$last_event_at"]},
                                    {"$eq": ["$status", _literal(status)]},
                                ]
                            },
                        ]
                    },
                ]
            },
        ]
    }
    moves = {"$and": [_field(_OK), _field(_NEWER)]}

    def when_moves(value: object, field: str) -> Document:
        return {"$cond": [moves, value, _field(field)]}

    tracking: object = (
        _literal(event.shipment.tracking_number)
        if event.shipment.tracking_number is not None
        else {"$ifNull": ["$tracking_number", None]}
    )
    history = {
        "$slice": [{"$concatArrays": [{"$ifNull": ["$history", []]}, [entry]]}, -HISTORY_LIMIT]
    }
    write: dict[str, Any] = {
        "source": {"$ifNull": ["$source", _literal(source)]},
        "shipment_id": {"$ifNull": ["$shipment_id", _literal(event.shipment.id)]},
        "order_id": {"$ifNull": ["$order_id", _literal(event.shipment.order_id)]},
        "tracking_number": {"$cond": [moves, tracking, {"$ifNull": ["$tracking_number", None]}]},
        "status": when_moves(_literal(status), "status"),
        "last_event_id": when_moves(_literal(event.event_id), "last_event_id"),
        "last_event_at": when_moves(occurred_at, "last_event_at"),
        "history": {"$cond": [_field(_OK), history, "$history"]},
        "created_at": {"$ifNull": ["$created_at", now]},
        "updated_at": {"$cond": [_field(_OK), now, "$updated_at"]},
    }
    return [
        {"$set": decide},
        {"$set": {_OK: allowed, _NEWER: not_older}},
        {"$set": write},
        {"$unset": [_NEW, _SEEN, _OK, _NEWER]},
    ]
