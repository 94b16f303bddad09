"""Adapter ``easypost``: EasyPost ``tracker.*`` webhook Events.

Signature: ``X-Hmac-Signature: hmac-sha256-hex=<hex HMAC-SHA256 of the raw body>``,
keyed with the webhook secret NFKD-normalised and UTF-8 encoded (as EasyPost's
client libraries do). The Event's ``result`` is a Tracker.
"""

from __future__ import annotations

import unicodedata
from typing import Final

from shared.adapters.base import FieldReader, Ignored, TrackingUpdate, body_hmac
from shared.adapters.carrier import CarrierRules, Fields, Newest, vocabulary
from shared.contracts import EventType

__all__ = ["DECODER", "FIELDS", "RULES", "SIGNATURE", "STATUSES", "key_of", "normalise"]

SIGNATURE: Final = body_hmac("x-hmac-signature", "hex", prefix="hmac-sha256-hex=")

FIELDS: Final = Fields(
    event_id=("id",),
    tracking_number=("result", "tracking_code"),
    status=("result", "status"),
    occurred_at=Newest(("result", "tracking_details"), ("datetime",), ("result", "updated_at")),
)
_DESCRIPTION = ("description",)
DECODER: Final = FIELDS.decoder(_DESCRIPTION)

STATUSES: Final = vocabulary(
    {
        EventType.CREATED: ("pre_transit",),
        EventType.IN_TRANSIT: ("in_transit",),
        EventType.OUT_FOR_DELIVERY: ("out_for_delivery", "available_for_pickup"),
        EventType.DELIVERED: ("delivered",),
        EventType.RETURNED: ("return_to_sender",),
        EventType.DELIVERY_FAILED: ("failure",),
        EventType.CANCELLED: ("cancelled",),
    }
)
"""Tracker statuses; ``unknown`` and ``error`` say nothing about the parcel and stay unmapped."""


def key_of(secret: str) -> bytes:
    """EasyPost's HMAC key: the secret NFKD-normalised, UTF-8."""
    return unicodedata.normalize("NFKD", secret).encode()


def normalise(reader: FieldReader) -> TrackingUpdate | Ignored:
    """A ``tracker.*`` Event as a tracking update; any other Event is ignored."""
    description = reader.get(_DESCRIPTION)
    if isinstance(description, str) and not description.startswith("tracker."):
        return Ignored(f"EasyPost event {description!r} is not a tracker update")
    return FIELDS.read(reader)


RULES: Final = CarrierRules("easypost", STATUSES, SIGNATURE, normalise, DECODER, key_of)
