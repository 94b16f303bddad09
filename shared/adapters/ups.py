"""Adapter ``ups``: UPS Track Alert webhooks.

UPS signs nothing: a subscription names a ``credential`` that UPS sends back
in a header of that name, compared in constant time with each secret. There is
no timestamp and no event id: replays are caught by dedupe alone, on an id
derived from (tracking number, status type, GMT activity time).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from shared.adapters.base import FieldReader, TrackingUpdate, static_token
from shared.adapters.carrier import CarrierRules, Fields, vocabulary
from shared.adapters.pointer import MISSING
from shared.contracts import EventType

__all__ = ["DECODER", "FIELDS", "RULES", "SIGNATURE", "STATUSES", "normalise"]

SIGNATURE: Final = static_token("credential")
"""The subscription's ``credential``, sent back as is in a header of that name."""

_DATE = ("gmtActivityDate",)
_TIME = ("gmtActivityTime",)
_DATE_FORMAT: Final = re.compile(r"[0-9]{8}")
_TIME_FORMAT: Final = re.compile(r"[0-9]{6}")


def _activity_time(reader: FieldReader) -> datetime | None:
    """``gmtActivityDate`` ``YYYYMMDD`` + ``gmtActivityTime`` ``HHMMSS``, UTC."""
    parts: list[str] = []
    for pointer, form, shape in (
        (_DATE, _DATE_FORMAT, "YYYYMMDD"),
        (_TIME, _TIME_FORMAT, "HHMMSS"),
    ):
        value = reader.get(pointer)
        if value is MISSING or value is None or value == "":
            reader.fail(pointer, "required")
        elif not isinstance(value, str) or not form.fullmatch(value):
            reader.fail(pointer, f"must be {shape}")
        else:
            parts.append(value)
    if len(parts) != 2:
        return None
    try:
        day, time = parts
        return datetime(
            int(day[:4]), int(day[4:6]), int(day[6:]),
            int(time[:2]), int(time[2:4]), int(time[4:]),
            tzinfo=UTC,
        )  # fmt: skip
    except ValueError:
        reader.fail(_DATE, "gmtActivityDate and gmtActivityTime are not a calendar time")
        return None


FIELDS: Final = Fields(
    tracking_number=("trackingNumber",),
    status=("activityStatus", "type"),
    occurred_at=_activity_time,
)
DECODER: Final = FIELDS.decoder(_DATE, _TIME)

STATUSES: Final = vocabulary(
    {
        EventType.CREATED: ("M",),
        EventType.PICKED_UP: ("P",),
        EventType.IN_TRANSIT: ("I", "W", "DO", "DD"),
        EventType.OUT_FOR_DELIVERY: ("O",),
        EventType.DELIVERY_FAILED: ("X",),
        EventType.DELIVERED: ("D",),
        EventType.RETURNED: ("RS",),
        EventType.CANCELLED: ("MV",),
    }
)
"""``activityStatus.type`` codes; ``NA`` (not available) stays unmapped."""


def normalise(reader: FieldReader) -> TrackingUpdate:
    """A Track Alert activity as a tracking update (every Track Alert is one)."""
    return FIELDS.read(reader)


RULES: Final = CarrierRules("ups", STATUSES, SIGNATURE, normalise, DECODER)
