"""Adapter ``easypost``: EasyPost ``tracker.*`` webhook Events.

Signature: ``X-Hmac-Signature: hmac-sha256-hex=<hex HMAC-SHA256 of the raw body>``,
keyed with the webhook secret NFKD-normalised and UTF-8 encoded (as EasyPost's
client libraries do). The Event's ``result`` is a Tracker.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import msgspec
from msgspec import UNSET, Struct, UnsetType

from shared.adapters.base import (
    BodyHmacAdapter,
    Ignored,
    TrackingUpdate,
    reader_for,
    tracking_update,
)
from shared.contracts import EventType

__all__ = ["SIGNATURE_HEADER", "STATUSES", "EasyPostAdapter", "normalise"]

SIGNATURE_HEADER: Final = "x-hmac-signature"
_PREFIX: Final = "hmac-sha256-hex="

STATUSES: Final[Mapping[str, EventType]] = {
    "pre_transit": EventType.CREATED,
    "in_transit": EventType.IN_TRANSIT,
    "out_for_delivery": EventType.OUT_FOR_DELIVERY,
    "available_for_pickup": EventType.OUT_FOR_DELIVERY,
    "delivered": EventType.DELIVERED,
    "return_to_sender": EventType.RETURNED,
    "failure": EventType.DELIVERY_FAILED,
    "cancelled": EventType.CANCELLED,
}
"""Tracker statuses; ``unknown`` and ``error`` say nothing about the parcel and stay unmapped."""

_ID = ("id",)
_DESCRIPTION = ("description",)
_TRACKING_CODE = ("result", "tracking_code")
_STATUS = ("result", "status")
_DETAILS = ("result", "tracking_details")
_DETAIL_TIME = ("datetime",)
_UPDATED_AT = ("result", "updated_at")


class _Detail(Struct):
    datetime: str | UnsetType | None = UNSET


class _Tracker(Struct):
    tracking_code: str | int | UnsetType | None = UNSET
    status: str | int | UnsetType | None = UNSET
    tracking_details: list[_Detail] | UnsetType | None = UNSET
    updated_at: str | UnsetType | None = UNSET


class _Event(Struct):
    """Only the fields the adapter reads; the rest of the body is skipped unparsed."""

    id: str | int | UnsetType | None = UNSET
    description: Any = UNSET
    result: _Tracker | UnsetType | None = UNSET


DECODER: Final = msgspec.json.Decoder(_Event)


def key_of(secret: str) -> bytes:
    """EasyPost's HMAC key: the secret NFKD-normalised, UTF-8."""
    return unicodedata.normalize("NFKD", secret).encode()


def normalise(
    body: bytes,
    statuses: Mapping[str, EventType],
    decoder: msgspec.json.Decoder[Any] | None = DECODER,
) -> TrackingUpdate | Ignored:
    """A ``tracker.*`` Event as a tracking update; any other Event is ignored."""
    reader = reader_for(body, decoder)
    description = reader.get(_DESCRIPTION)
    if isinstance(description, str) and not description.startswith("tracker."):
        return Ignored(f"EasyPost event {description!r} is not a tracker update")
    return tracking_update(
        reader,
        statuses=statuses,
        event_id=reader.identifier(_ID),
        tracking_number=reader.identifier(_TRACKING_CODE),
        status=reader.identifier(_STATUS),
        occurred_at=reader.newest(_DETAILS, _DETAIL_TIME, _UPDATED_AT),
    )


class EasyPostAdapter(BodyHmacAdapter):
    kind: ClassVar[str] = "easypost"
    STATUSES: ClassVar[Mapping[str, EventType]] = STATUSES
    HEADER: ClassVar[str] = SIGNATURE_HEADER
    ENCODING: ClassVar[str] = "hex"
    PREFIX: ClassVar[str] = _PREFIX
    __slots__ = ()

    @staticmethod
    def key_of(secret: str) -> bytes:
        return key_of(secret)

    def normalise(self, body: bytes) -> TrackingUpdate | Ignored:
        return normalise(body, self.statuses)
