"""Adapter ``shopify``: Shopify ``fulfillment_events/create`` webhooks (a FulfillmentEvent).

Signature: ``X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the raw body>``, keyed
with the app's client secret. Shopify ids are integers; they become text.
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
from shared.adapters.pointer import MISSING
from shared.contracts import EventType

__all__ = ["SIGNATURE_HEADER", "STATUSES", "ShopifyAdapter", "normalise"]

SIGNATURE_HEADER: Final = "x-shopify-hmac-sha256"

STATUSES: Final[Mapping[str, EventType]] = {
    "confirmed": EventType.CREATED,
    "label_purchased": EventType.CREATED,
    "label_printed": EventType.CREATED,
    "carrier_picked_up": EventType.PICKED_UP,
    "picked_up": EventType.PICKED_UP,
    "in_transit": EventType.IN_TRANSIT,
    "delayed": EventType.IN_TRANSIT,
    "out_for_delivery": EventType.OUT_FOR_DELIVERY,
    "ready_for_pickup": EventType.OUT_FOR_DELIVERY,
    "ready_for_recipient_pickup": EventType.OUT_FOR_DELIVERY,
    "attempted_delivery": EventType.DELIVERY_FAILED,
    "buyer_action_required": EventType.DELIVERY_FAILED,
    "failure": EventType.DELIVERY_FAILED,
    "delivered": EventType.DELIVERED,
    "returning_to_sender": EventType.RETURNED,
}
"""FulfillmentEvent statuses (the REST webhook's lower-case spelling of the GraphQL enum)."""

_ID = ("id",)
_FULFILLMENT_ID = ("fulfillment_id",)
_TRACKING_NUMBER = ("tracking_number",)
_STATUS = ("status",)
_HAPPENED_AT = ("happened_at",)
_ORDER_ID = ("order_id",)


class _FulfillmentEvent(Struct):
    """Only the fields the adapter reads; the rest of the body is skipped unparsed."""

    id: str | int | UnsetType | None = UNSET
    fulfillment_id: str | int | UnsetType | None = UNSET
    tracking_number: str | int | UnsetType | None = UNSET
    status: str | int | UnsetType | None = UNSET
    happened_at: str | UnsetType | None = UNSET
    order_id: str | int | UnsetType | None = UNSET


DECODER: Final = msgspec.json.Decoder(_FulfillmentEvent)


def normalise(
    body: bytes,
    statuses: Mapping[str, EventType],
    decoder: msgspec.json.Decoder[Any] | None = DECODER,
) -> TrackingUpdate | Ignored:
    """A FulfillmentEvent as a tracking update.

    A body with neither ``fulfillment_id`` nor ``happened_at`` is another
    topic's payload (an order, a fulfillment) and is ignored: a webhook's topic
    travels in a header, and normalisation must work from the body alone.
    """
    reader = reader_for(body, decoder)
    if reader.get(_FULFILLMENT_ID) is MISSING and reader.get(_HAPPENED_AT) is MISSING:
        return Ignored("Shopify payload is not a fulfillment event")
    tracking_number = reader.identifier(_TRACKING_NUMBER, required=False)
    if tracking_number is None:
        tracking_number = reader.identifier(_FULFILLMENT_ID)
    return tracking_update(
        reader,
        statuses=statuses,
        event_id=reader.identifier(_ID),
        tracking_number=tracking_number,
        status=reader.identifier(_STATUS),
        occurred_at=reader.instant(_HAPPENED_AT),
        order_id=reader.identifier(_ORDER_ID, required=False),
    )


class ShopifyAdapter(BodyHmacAdapter):
    kind: ClassVar[str] = "shopify"
    STATUSES: ClassVar[Mapping[str, EventType]] = STATUSES
    HEADER: ClassVar[str] = SIGNATURE_HEADER
    ENCODING: ClassVar[str] = "base64"
    __slots__ = ()

    def normalise(self, body: bytes) -> TrackingUpdate | Ignored:
        return normalise(body, self.statuses)
