"""Adapter ``shippo``: Shippo ``track_updated`` webhooks.

Signature: ``Shippo-Auth-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of "{t}.{raw body}">``,
keyed with the webhook HMAC secret; ``t`` must be within the tolerance of
docs/contract.md §3.1. ``data`` is the Tracking object. Shippo sends no event
id: it is derived from (tracking number, status, status date).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

import msgspec
from msgspec import UNSET, Struct, UnsetType

from shared.adapters.base import (
    CarrierAdapter,
    Ignored,
    TrackingUpdate,
    decode_digest,
    header,
    reader_for,
    tracking_update,
    verify_hmac,
)
from shared.contracts import EventType, ProblemCode
from shared.signing import SignatureError

__all__ = ["SIGNATURE_HEADER", "STATUSES", "ShippoAdapter", "normalise", "verify"]

SIGNATURE_HEADER: Final = "shippo-auth-signature"
_TIMESTAMP: Final = re.compile(r"-?[0-9]{1,19}")

STATUSES: Final[Mapping[str, EventType]] = {
    "PRE_TRANSIT": EventType.CREATED,
    "TRANSIT": EventType.IN_TRANSIT,
    "DELIVERED": EventType.DELIVERED,
    "RETURNED": EventType.RETURNED,
    "FAILURE": EventType.DELIVERY_FAILED,
}
"""Tracking statuses; ``UNKNOWN`` (no information from the carrier) stays unmapped."""

_EVENT = ("event",)
_TRACKING_NUMBER = ("data", "tracking_number")
_STATUS = ("data", "tracking_status", "status")
_STATUS_DATE = ("data", "tracking_status", "status_date")


class _TrackingStatus(Struct):
    status: str | int | UnsetType | None = UNSET
    status_date: str | UnsetType | None = UNSET


class _Tracking(Struct):
    tracking_number: str | int | UnsetType | None = UNSET
    tracking_status: _TrackingStatus | UnsetType | None = UNSET


class _Webhook(Struct):
    """Only the fields the adapter reads; the rest of the body is skipped unparsed."""

    event: Any = UNSET
    data: _Tracking | UnsetType | None = UNSET


DECODER: Final = msgspec.json.Decoder(_Webhook)


def _parse_header(value: str) -> tuple[str | None, list[str]]:
    """The ``t`` value and every ``v1`` value of a ``t=…,v1=…`` header."""
    timestamp: str | None = None
    signatures: list[str] = []
    for item in value.split(","):
        name, _, text = item.strip().partition("=")
        if name == "t":
            timestamp = text
        elif name == "v1":
            signatures.append(text)
    return timestamp, signatures


def verify(
    body: bytes, headers: Mapping[str, str], keys: Sequence[bytes], *, now: float, tolerance_s: int
) -> None:
    """Accept if ``t`` is within tolerance and any ``v1`` is the HMAC of ``{t}.{body}``."""
    raw_timestamp, signatures = _parse_header(header(headers, SIGNATURE_HEADER))
    if raw_timestamp is None or not _TIMESTAMP.fullmatch(raw_timestamp):
        raise SignatureError(
            ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE,
            "Shippo-Auth-Signature must carry t=<integer Unix seconds>",
        )
    if abs(now - int(raw_timestamp)) > tolerance_s:
        raise SignatureError(
            ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE,
            f"Shippo-Auth-Signature t is more than {tolerance_s} s away from the server's clock",
        )
    message = raw_timestamp.encode() + b"." + body
    offered = [digest for text in signatures if (digest := decode_digest(text, "hex")) is not None]
    verify_hmac(offered, keys, message, "no v1 signature in Shippo-Auth-Signature matches")


def normalise(
    body: bytes,
    statuses: Mapping[str, EventType],
    decoder: msgspec.json.Decoder[Any] | None = DECODER,
) -> TrackingUpdate | Ignored:
    """A ``track_updated`` as a tracking update; other events (transactions, batches) ignored."""
    reader = reader_for(body, decoder)
    event = reader.get(_EVENT)
    if isinstance(event, str) and event != "track_updated":
        return Ignored(f"Shippo event {event!r} is not a tracking update")
    return tracking_update(
        reader,
        statuses=statuses,
        tracking_number=reader.identifier(_TRACKING_NUMBER),
        status=reader.identifier(_STATUS),
        occurred_at=reader.instant(_STATUS_DATE),
    )


def sign(body: bytes, key: bytes, *, now: float) -> dict[str, str]:
    """The header Shippo sends with ``body`` at ``now``."""
    timestamp = str(int(now))
    digest = hmac.digest(key, timestamp.encode() + b"." + body, hashlib.sha256).hex()
    return {SIGNATURE_HEADER: f"t={timestamp},v1={digest}"}


class ShippoAdapter(CarrierAdapter):
    kind: ClassVar[str] = "shippo"
    STATUSES: ClassVar[Mapping[str, EventType]] = STATUSES
    __slots__ = ()

    @property
    def header_names(self) -> tuple[str, ...]:
        return (SIGNATURE_HEADER,)

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> None:
        verify(body, headers, self._keys, now=now, tolerance_s=self._tolerance_s)

    def normalise(self, body: bytes) -> TrackingUpdate | Ignored:
        return normalise(body, self.statuses)

    def sign(self, body: bytes, *, now: float, key_index: int = 0) -> dict[str, str]:
        return sign(body, self._keys[key_index], now=now)
