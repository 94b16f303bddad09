"""Wire contracts shared by the API, the workers and the scripts.

* :class:`CourierEvent` — the body a courier POSTs (SPEC §3.1), validated by
  msgspec while it is decoded.
* :class:`QueuedEvent` — the job argument the API enqueues and a worker runs:
  the courier's body byte-exact, never re-encoded (``docs/contract.md §4.4``).
* :class:`ProblemCode` — the stable machine codes of ``application/problem+json``
  answers.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "TERMINAL_STATUSES",
    "Accepted",
    "CourierEvent",
    "EventType",
    "FieldError",
    "Location",
    "Problem",
    "ProblemCode",
    "QueuedEvent",
    "ReplayRef",
    "Shipment",
    "decode_event",
    "idempotency_key",
]

# Printable means no C0/C1 control characters; spaces and non-ASCII are allowed.
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]+$"
EventId = Annotated[str, Meta(min_length=1, max_length=128, pattern=PRINTABLE)]
Identifier = Annotated[str, Meta(min_length=1, max_length=128)]
AwareDatetime = Annotated[datetime, Meta(tz=True)]


class EventType(enum.StrEnum):
    """The shipment events a courier may send (SPEC §3.3)."""

    CREATED = "shipment.created"
    PICKED_UP = "shipment.picked_up"
    IN_TRANSIT = "shipment.in_transit"
    OUT_FOR_DELIVERY = "shipment.out_for_delivery"
    DELIVERY_FAILED = "shipment.delivery_failed"
    DELIVERED = "shipment.delivered"
    RETURNED = "shipment.returned"
    CANCELLED = "shipment.cancelled"

    @property
    def status(self) -> str:
        """The shipment status this event moves to: the type's suffix."""
        return self.value.removeprefix("shipment.")


TERMINAL_STATUSES = frozenset({"delivered", "returned", "cancelled"})


class Shipment(Struct, frozen=True):
    id: Identifier
    order_id: Identifier
    tracking_number: Annotated[str, Meta(max_length=128)] | None = None


class Location(Struct, frozen=True):
    lat: Annotated[float, Meta(ge=-90, le=90)]
    lon: Annotated[float, Meta(ge=-180, le=180)]


class CourierEvent(Struct, frozen=True):
    """A shipment event as a courier sends it. Unknown top-level fields are ignored."""

    event_id: EventId
    event_type: EventType
    occurred_at: AwareDatetime
    shipment: Shipment
    location: Location | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class ReplayRef(Struct, frozen=True):
    """Marks a job as an operator's replay of a dead letter."""

    by: str
    at_ms: int


class QueuedEvent(Struct, frozen=True, kw_only=True):
    """The single argument of the ``process_event`` job, and what a dead letter keeps.

    ``body`` is the request body exactly as the courier sent it (MessagePack
    ``bin`` in the job, a string in the dead letter): courier data is opaque
    (``docs/contract.md §4.4``), so nothing the courier put in ``data`` is
    re-encoded on its way through the queue and the store. The API validated
    it at ingest; the worker decodes it again (:meth:`decode`). ``event_id``
    (with ``idempotency_key``) is what the API derived from it, so a body the
    worker can no longer decode is still recorded under its key.

    ``received_at_ms`` is when the API accepted the event; ``request_id`` ties
    the worker's log lines to the courier's request. A carrier adapter's name
    (``docs/contract.md §3.4``) would travel here too, naming how ``body`` is read.
    """

    idempotency_key: str
    source: str
    event_id: str
    body: bytes
    request_id: str
    received_at_ms: int
    replay: ReplayRef | None = None

    def decode(self) -> CourierEvent:
        """The courier event in ``body``; raises as :func:`decode_event` does."""
        return decode_event(self.body)

    @property
    def event(self) -> CourierEvent:
        """:meth:`decode` as a property (decodes on every access: keep the result)."""
        return decode_event(self.body)


class ProblemCode(enum.StrEnum):
    """Stable machine codes of problem+json answers (SPEC §3.1, §3.2)."""

    MALFORMED_JSON = "malformed_json"
    SIGNATURE_MISSING = "signature_missing"
    TIMESTAMP_OUT_OF_TOLERANCE = "timestamp_out_of_tolerance"
    SIGNATURE_INVALID = "signature_invalid"
    UNKNOWN_SOURCE = "unknown_source"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    VALIDATION_FAILED = "validation_failed"
    QUEUE_UNAVAILABLE = "queue_unavailable"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BAD_REQUEST = "bad_request"
    CONFLICT = "conflict"
    STORE_UNAVAILABLE = "store_unavailable"
    INTERNAL_ERROR = "internal_error"


class FieldError(Struct, frozen=True):
    field: str
    message: str


class Problem(Struct, frozen=True, omit_defaults=True):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    code: ProblemCode
    request_id: str
    errors: list[FieldError] | None = None


class Accepted(Struct, frozen=True):
    """Body of 202 (``status="accepted"``) and 200 (``status="duplicate"``) answers."""

    status: str
    idempotency_key: str
    request_id: str


def idempotency_key(source: str, event_id: str) -> str:
    """The key that identifies one courier event everywhere: ``{source}:{event_id}``."""
    return f"{source}:{event_id}"


_event_decoder = msgspec.json.Decoder(CourierEvent)


def decode_event(body: bytes) -> CourierEvent:
    """Decode and validate a courier event.

    Raises :class:`msgspec.ValidationError` when the body is JSON but not a valid
    event, and :class:`msgspec.DecodeError` when it is not JSON or not UTF-8.
    The whole body must be UTF-8, including fields that are ignored.
    """
    # msgspec skips ignored fields without checking their UTF-8, and raises
    # UnicodeDecodeError (not DecodeError) for a bad string it does decode.
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            raise msgspec.DecodeError(f"body is not valid UTF-8 (byte {exc.start})") from exc
    return _event_decoder.decode(body)
