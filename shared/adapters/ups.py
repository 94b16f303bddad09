"""Adapter ``ups``: UPS Track Alert webhooks.

UPS signs nothing: a subscription names a ``credential`` that UPS sends back
in a header of that name, compared in constant time with each secret. There is
no timestamp and no event id: replays are caught by dedupe alone, on an id
derived from (tracking number, status type, GMT activity time).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import msgspec
from msgspec import UNSET, Struct, UnsetType

from shared.adapters.base import (
    CarrierAdapter,
    FieldReader,
    TrackingUpdate,
    header,
    reader_for,
    tracking_update,
    verify_token,
)
from shared.adapters.pointer import MISSING
from shared.contracts import EventType

__all__ = ["CREDENTIAL_HEADER", "STATUSES", "UpsAdapter", "normalise", "verify"]

CREDENTIAL_HEADER: Final = "credential"

STATUSES: Final[Mapping[str, EventType]] = {
    "M": EventType.CREATED,
    "P": EventType.PICKED_UP,
    "I": EventType.IN_TRANSIT,
    "W": EventType.IN_TRANSIT,
    "DO": EventType.IN_TRANSIT,
    "DD": EventType.IN_TRANSIT,
    "O": EventType.OUT_FOR_DELIVERY,
    "X": EventType.DELIVERY_FAILED,
    "D": EventType.DELIVERED,
    "RS": EventType.RETURNED,
    "MV": EventType.CANCELLED,
}
"""``activityStatus.type`` codes; ``NA`` (not available) stays unmapped."""

_TRACKING_NUMBER = ("trackingNumber",)
_STATUS_TYPE = ("activityStatus", "type")
_DATE = ("gmtActivityDate",)
_TIME = ("gmtActivityTime",)
_DATE_FORMAT: Final = re.compile(r"[0-9]{8}")
_TIME_FORMAT: Final = re.compile(r"[0-9]{6}")


class _ActivityStatus(Struct):
    type: str | int | UnsetType | None = UNSET


class _TrackAlert(Struct):
    """Only the fields the adapter reads (UPS's own camelCase names); the rest is skipped."""

    trackingNumber: str | int | UnsetType | None = UNSET  # noqa: N815
    activityStatus: _ActivityStatus | UnsetType | None = UNSET  # noqa: N815
    gmtActivityDate: str | int | UnsetType | None = UNSET  # noqa: N815
    gmtActivityTime: str | int | UnsetType | None = UNSET  # noqa: N815


DECODER: Final = msgspec.json.Decoder(_TrackAlert)


def verify(body: bytes, headers: Mapping[str, str], keys: Sequence[bytes]) -> None:
    """Accept if the ``credential`` header equals any secret."""
    verify_token(header(headers, CREDENTIAL_HEADER), keys, CREDENTIAL_HEADER)


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


def normalise(
    body: bytes,
    statuses: Mapping[str, EventType],
    decoder: msgspec.json.Decoder[Any] | None = DECODER,
) -> TrackingUpdate:
    """A Track Alert activity as a tracking update (every Track Alert is one)."""
    reader = reader_for(body, decoder)
    return tracking_update(
        reader,
        statuses=statuses,
        tracking_number=reader.identifier(_TRACKING_NUMBER),
        status=reader.identifier(_STATUS_TYPE),
        occurred_at=_activity_time(reader),
    )


def sign(body: bytes, key: bytes) -> dict[str, str]:
    """The header UPS sends: the subscription's credential, whatever the body."""
    return {CREDENTIAL_HEADER: key.decode()}


class UpsAdapter(CarrierAdapter):
    kind: ClassVar[str] = "ups"
    STATUSES: ClassVar[Mapping[str, EventType]] = STATUSES
    __slots__ = ()

    @property
    def header_names(self) -> tuple[str, ...]:
        return (CREDENTIAL_HEADER,)

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> None:
        verify(body, headers, self._keys)

    def normalise(self, body: bytes) -> TrackingUpdate:
        return normalise(body, self.statuses)

    def sign(self, body: bytes, *, now: float, key_index: int = 0) -> dict[str, str]:
        return sign(body, self._keys[key_index])
