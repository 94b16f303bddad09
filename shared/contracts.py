"""Wire contracts shared by the API, the workers and the scripts.

* :class:`CourierEvent` — the body a courier POSTs (docs/contract.md §3.1), validated by
  msgspec while it is decoded.
* :class:`QueuedEvent` — the job argument the API enqueues and a worker runs:
  the courier's body byte-exact, never re-encoded (``docs/contract.md §4.4``).
* :class:`ProblemCode` — the stable machine codes of ``application/problem+json``
  answers.
"""

from __future__ import annotations

import enum
import re
import typing
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "CANONICAL_ADAPTERS",
    "EMPTY_DATA",
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
    "TooDeeplyNested",
    "decode_event",
    "event_field_errors",
    "idempotency_key",
]

# Printable means no C0/C1 control characters; spaces and non-ASCII are allowed.
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]+$"
EventId = Annotated[str, Meta(min_length=1, max_length=128, pattern=PRINTABLE)]
Identifier = Annotated[str, Meta(min_length=1, max_length=128)]
AwareDatetime = Annotated[datetime, Meta(tz=True)]


class EventType(enum.StrEnum):
    """The shipment events a courier may send (docs/contract.md §3.3)."""

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


EMPTY_DATA: Final = msgspec.Raw(b"{}")
"""``data`` of an event that sent none."""
OpaqueObject = Annotated[
    msgspec.Raw,
    Meta(
        description="Free-form JSON object, kept byte-exact as sent.",
        extra_json_schema={"type": "object"},
    ),
]


class CourierEvent(Struct, frozen=True):
    """A shipment event as a courier sends it. Unknown top-level fields are ignored.

    ``data`` is opaque (``docs/contract.md §4.4``): the JSON object exactly as
    sent (:class:`msgspec.Raw`), never decoded into Python values, so integers
    beyond 64 bits, numbers beyond a float's range, NUL characters, ``$``-keys
    and the like pass through untouched (and it costs less to decode).
    Read it with ``msgspec.json.decode(event.data)`` if you must.
    """

    event_id: EventId
    event_type: EventType
    occurred_at: AwareDatetime
    shipment: Shipment
    location: Location | None = None
    data: OpaqueObject = msgspec.field(default_factory=lambda: EMPTY_DATA)


CANONICAL_ADAPTERS: Final = frozenset({"standard", "hex"})
"""Adapters whose bodies are the canonical event of docs/contract.md §3.1 itself."""


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
    the worker's log lines to the courier's request. ``adapter`` names how
    ``body`` is read (docs/contract.md §3.4): ``standard``/``hex`` bodies are
    canonical events; a carrier's body is normalised again by the worker with
    the source's configuration of the moment, so a replay after a vocabulary
    change applies it.
    """

    idempotency_key: str
    source: str
    event_id: str
    body: bytes
    request_id: str
    received_at_ms: int
    replay: ReplayRef | None = None
    adapter: str = "standard"

    def decode(self) -> CourierEvent:
        """The courier event in ``body``; raises as :func:`decode_event` does."""
        return decode_event(self.body)

    @property
    def event(self) -> CourierEvent:
        """:meth:`decode` as a property (decodes on every access: keep the result)."""
        return decode_event(self.body)


class ProblemCode(enum.StrEnum):
    """Stable machine codes of problem+json answers (docs/contract.md §3.1, §3.2)."""

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
    try:
        event = _event_decoder.decode(body)
    except RecursionError as exc:
        raise TooDeeplyNested from exc
    data = event.data
    if data is not EMPTY_DATA and memoryview(data)[0] != _OPEN_BRACE:
        raise msgspec.ValidationError(f"Expected `object`, got `{_raw_kind(data)}` - at `$.data`")
    return event


class TooDeeplyNested(msgspec.ValidationError):
    """The body nests arrays/objects deeper than the decoder can follow (about 10,000 levels)."""

    def __init__(self) -> None:
        super().__init__(
            "the body nests arrays or objects too deeply to be decoded "
            f"(at most about {MAX_NESTING} levels)"
        )


MAX_NESTING: Final = 9_000
"""Nesting the decoder follows safely; msgspec's own limit is about 10,000 levels."""
_OPEN_BRACE: Final = ord("{")
_RAW_KINDS: Final = {ord("["): "array", ord('"'): "str", ord("t"): "bool", ord("f"): "bool"}


def _raw_kind(raw: msgspec.Raw) -> str:
    first = memoryview(raw)[0]
    if first == ord("n"):
        return "null"
    return _RAW_KINDS.get(first, "number")


# msgspec: "Expected `str` of length >= 1 - at `$.shipment.id`" (nested values only)
_AT_PATH: Final = re.compile(r"^(?P<message>.*) - at `\$(?P<path>.*)`$", re.DOTALL)
_JSON_TYPES: Final = {
    dict: "object",
    list: "array",
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    type(None): "null",
}


def event_field_errors(document: Any) -> list[FieldError]:
    """Every field of a decoded JSON ``document`` that breaks :class:`CourierEvent`'s rules.

    msgspec stops at the first error; this walks the whole document, field by
    field, checking each value with msgspec against the field's own type, so a
    422 can name every invalid field. Only the error path runs it: a valid
    event never gets here. Paths are dotted (``shipment.id``, ``data.items[0]``);
    an error about the whole body has the field ``""``.
    """
    return _struct_errors(document, CourierEvent, "")


def _struct_errors(value: Any, struct: type[Struct], path: str) -> list[FieldError]:
    if not isinstance(value, dict):
        got = _JSON_TYPES.get(type(value), type(value).__name__)
        return [FieldError(path, f"Expected `object`, got `{got}`")]
    errors: list[FieldError] = []
    for field in msgspec.structs.fields(struct):
        name = field.encode_name
        where = f"{path}.{name}" if path else name
        if name not in value:
            if field.required:
                errors.append(FieldError(where, f"Object missing required field `{name}`"))
            continue
        item = value[name]
        if field.type is OpaqueObject:
            if not isinstance(item, dict):
                got = _JSON_TYPES.get(type(item), type(item).__name__)
                errors.append(FieldError(where, f"Expected `object`, got `{got}`"))
            continue
        nested = _struct_in(field.type)
        if nested is not None and isinstance(item, dict):
            errors.extend(_struct_errors(item, nested, where))
            continue
        try:
            msgspec.convert(item, field.type)
        except msgspec.ValidationError as exc:
            message = str(exc)
            if matched := _AT_PATH.match(message):
                message, where = matched["message"], where + matched["path"]
            errors.append(FieldError(where, message))
    return errors


def _struct_in(annotation: Any) -> type[Struct] | None:
    """The Struct type in ``annotation`` (``Location`` in ``Location | None``), if any."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, Struct):
            return candidate
    return None
