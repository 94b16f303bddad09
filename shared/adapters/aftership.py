"""Adapter ``aftership``: AfterShip Tracking ``tracking_update`` webhooks.

Signature: ``aftership-hmac-sha256: <base64 HMAC-SHA256 of the raw body>``,
keyed with the webhook secret (AfterShip: Tracking > Settings > Webhooks).
``msg`` is the Tracking object; its ``tag`` is the delivery status.
"""

from __future__ import annotations

from typing import Final

from shared.adapters.base import FieldReader, Ignored, TrackingUpdate, body_hmac, other_event
from shared.adapters.carrier import CarrierRules, Fields, Newest, vocabulary
from shared.contracts import EventType

__all__ = ["DECODER", "FIELDS", "RULES", "SIGNATURE", "STATUSES", "normalise"]

SIGNATURE: Final = body_hmac("aftership-hmac-sha256", "base64")

FIELDS: Final = Fields(
    event_id=("event_id",),
    tracking_number=("msg", "tracking_number"),
    status=("msg", "tag"),
    occurred_at=Newest(("msg", "checkpoints"), ("checkpoint_time",), ("msg", "updated_at")),
    order_id=("msg", "order_id"),
)
_EVENT = ("event",)
DECODER: Final = FIELDS.decoder(_EVENT)

STATUSES: Final = vocabulary(
    {
        EventType.CREATED: ("Pending", "InfoReceived"),
        EventType.IN_TRANSIT: ("InTransit",),
        EventType.OUT_FOR_DELIVERY: ("OutForDelivery", "AvailableForPickup"),
        EventType.DELIVERY_FAILED: ("AttemptFail", "Exception"),
        EventType.DELIVERED: ("Delivered",),
    }
)
"""Delivery status tags; ``Expired`` (no news for 30 days) stays unmapped."""


def normalise(reader: FieldReader) -> TrackingUpdate | Ignored:
    """A ``tracking_update`` as a tracking update; other events (``edd_revise``…) are ignored."""
    if (event := other_event(reader, _EVENT, "tracking_update")) is not None:
        return Ignored(f"AfterShip event {event!r} is not a tracking update")
    return FIELDS.read(reader)


RULES: Final = CarrierRules("aftership", STATUSES, SIGNATURE, normalise, DECODER)
