"""Adapter ``aftership``: AfterShip Tracking ``tracking_update`` webhooks.

Signature: ``aftership-hmac-sha256: <base64 HMAC-SHA256 of the raw body>``,
keyed with the webhook secret (AfterShip: Tracking > Settings > Webhooks).
``msg`` is the Tracking object; its ``tag`` is the delivery status.
"""

from __future__ import annotations

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

__all__ = ["SIGNATURE_HEADER", "STATUSES", "AfterShipAdapter", "normalise"]

SIGNATURE_HEADER: Final = "aftership-hmac-sha256"

STATUSES: Final[Mapping[str, EventType]] = {
    "Pending": EventType.CREATED,
    "InfoReceived": EventType.CREATED,
    "InTransit": EventType.IN_TRANSIT,
    "OutForDelivery": EventType.OUT_FOR_DELIVERY,
    "AvailableForPickup": EventType.OUT_FOR_DELIVERY,
    "AttemptFail": EventType.DELIVERY_FAILED,
    "Exception": EventType.DELIVERY_FAILED,
    "Delivered": EventType.DELIVERED,
}
"""Delivery status tags; ``Expired`` (no news for 30 days) stays unmapped."""

_EVENT = ("event",)
_EVENT_ID = ("event_id",)
_TRACKING_NUMBER = ("msg", "tracking_number")
_TAG = ("msg", "tag")
_CHECKPOINTS = ("msg", "checkpoints")
_CHECKPOINT_TIME = ("checkpoint_time",)
_UPDATED_AT = ("msg", "updated_at")
_ORDER_ID = ("msg", "order_id")


class _Checkpoint(Struct):
    checkpoint_time: str | UnsetType | None = UNSET


class _Tracking(Struct):
    tracking_number: str | int | UnsetType | None = UNSET
    tag: str | int | UnsetType | None = UNSET
    checkpoints: list[_Checkpoint] | UnsetType | None = UNSET
    updated_at: str | UnsetType | None = UNSET
    order_id: str | int | UnsetType | None = UNSET


class _Webhook(Struct):
    """Only the fields the adapter reads; the rest of the body is skipped unparsed."""

    event: Any = UNSET
    event_id: str | int | UnsetType | None = UNSET
    msg: _Tracking | UnsetType | None = UNSET


DECODER: Final = msgspec.json.Decoder(_Webhook)


def normalise(
    body: bytes,
    statuses: Mapping[str, EventType],
    decoder: msgspec.json.Decoder[Any] | None = DECODER,
) -> TrackingUpdate | Ignored:
    """A ``tracking_update`` as a tracking update; other events (``edd_revise``…) are ignored."""
    reader = reader_for(body, decoder)
    event = reader.get(_EVENT)
    if isinstance(event, str) and event != "tracking_update":
        return Ignored(f"AfterShip event {event!r} is not a tracking update")
    return tracking_update(
        reader,
        statuses=statuses,
        event_id=reader.identifier(_EVENT_ID),
        tracking_number=reader.identifier(_TRACKING_NUMBER),
        status=reader.identifier(_TAG),
        occurred_at=reader.newest(_CHECKPOINTS, _CHECKPOINT_TIME, _UPDATED_AT),
        order_id=reader.identifier(_ORDER_ID, required=False),
    )


class AfterShipAdapter(BodyHmacAdapter):
    kind: ClassVar[str] = "aftership"
    STATUSES: ClassVar[Mapping[str, EventType]] = STATUSES
    HEADER: ClassVar[str] = SIGNATURE_HEADER
    ENCODING: ClassVar[str] = "base64"
    __slots__ = ()

    def normalise(self, body: bytes) -> TrackingUpdate | Ignored:
        return normalise(body, self.statuses)
