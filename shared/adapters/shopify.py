"""Adapter ``shopify``: Shopify ``fulfillment_events/create`` webhooks (a FulfillmentEvent).

Signature: ``X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the raw body>``, keyed
with the app's client secret. Shopify ids are integers; they become text.
"""

from __future__ import annotations

from typing import Final

from shared.adapters.base import FieldReader, Ignored, TrackingUpdate, body_hmac
from shared.adapters.carrier import CarrierRules, Fields, vocabulary
from shared.adapters.pointer import MISSING
from shared.contracts import EventType

__all__ = ["DECODER", "FIELDS", "RULES", "SIGNATURE", "STATUSES", "normalise"]

SIGNATURE: Final = body_hmac("x-shopify-hmac-sha256", "base64")

_FULFILLMENT_ID = ("fulfillment_id",)
_HAPPENED_AT = ("happened_at",)
FIELDS: Final = Fields(
    event_id=("id",),
    tracking_number=("tracking_number",),
    status=("status",),
    occurred_at=_HAPPENED_AT,
    order_id=("order_id",),
)
"""``tracking_number`` when the body has one, else ``fulfillment_id`` (:func:`normalise`)."""
DECODER: Final = FIELDS.decoder(_FULFILLMENT_ID)

STATUSES: Final = vocabulary(
    {
        EventType.CREATED: ("confirmed", "label_purchased", "label_printed"),
        EventType.PICKED_UP: ("carrier_picked_up", "picked_up"),
        EventType.IN_TRANSIT: ("in_transit", "delayed"),
        EventType.OUT_FOR_DELIVERY: (
            "out_for_delivery",
            "ready_for_pickup",
            "ready_for_recipient_pickup",
        ),
        EventType.DELIVERY_FAILED: ("attempted_delivery", "buyer_action_required", "failure"),
        EventType.DELIVERED: ("delivered",),
        EventType.RETURNED: ("returning_to_sender",),
    }
)
"""FulfillmentEvent statuses (the REST webhook's lower-case spelling of the GraphQL enum)."""


def normalise(reader: FieldReader) -> TrackingUpdate | Ignored:
    """A FulfillmentEvent as a tracking update.

    A body with neither ``fulfillment_id`` nor ``happened_at`` is another
    topic's payload (an order, a fulfillment) and is ignored: a webhook's topic
    travels in a header, and normalisation must work from the body alone.
    """
    if reader.get(_FULFILLMENT_ID) is MISSING and reader.get(_HAPPENED_AT) is MISSING:
        return Ignored("Shopify payload is not a fulfillment event")
    tracking_number = reader.identifier(FIELDS.tracking_number, required=False)
    if tracking_number is None:
        tracking_number = reader.identifier(_FULFILLMENT_ID)
    return FIELDS.read(reader, tracking_number=tracking_number)


RULES: Final = CarrierRules("shopify", STATUSES, SIGNATURE, normalise, DECODER)
