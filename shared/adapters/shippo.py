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
from typing import Final

from shared.adapters.base import (
    FieldReader,
    Ignored,
    Signature,
    TrackingUpdate,
    decode_digest,
    header,
    other_event,
    verify_hmac,
)
from shared.adapters.carrier import CarrierRules, Fields, vocabulary
from shared.contracts import EventType, ProblemCode
from shared.signing import SignatureError

__all__ = [
    "DECODER",
    "FIELDS",
    "RULES",
    "SIGNATURE_HEADER",
    "STATUSES",
    "normalise",
    "sign",
    "verify",
]

SIGNATURE_HEADER: Final = "shippo-auth-signature"
_TIMESTAMP: Final = re.compile(r"-?[0-9]{1,19}")

FIELDS: Final = Fields(
    tracking_number=("data", "tracking_number"),
    status=("data", "tracking_status", "status"),
    occurred_at=("data", "tracking_status", "status_date"),
)
_EVENT = ("event",)
DECODER: Final = FIELDS.decoder(_EVENT)

STATUSES: Final = vocabulary(
    {
        EventType.CREATED: ("PRE_TRANSIT",),
        EventType.IN_TRANSIT: ("TRANSIT",),
        EventType.DELIVERED: ("DELIVERED",),
        EventType.RETURNED: ("RETURNED",),
        EventType.DELIVERY_FAILED: ("FAILURE",),
    }
)
"""Tracking statuses; ``UNKNOWN`` (no information from the carrier) stays unmapped."""


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


def sign(body: bytes, key: bytes, *, now: float) -> dict[str, str]:
    """The header Shippo sends with ``body`` at ``now``."""
    timestamp = str(int(now))
    digest = hmac.digest(key, timestamp.encode() + b"." + body, hashlib.sha256).hex()
    return {SIGNATURE_HEADER: f"t={timestamp},v1={digest}"}


def normalise(reader: FieldReader) -> TrackingUpdate | Ignored:
    """A ``track_updated`` as a tracking update; other events (transactions, batches) ignored."""
    if (event := other_event(reader, _EVENT, "track_updated")) is not None:
        return Ignored(f"Shippo event {event!r} is not a tracking update")
    return FIELDS.read(reader)


RULES: Final = CarrierRules(
    "shippo", STATUSES, Signature((SIGNATURE_HEADER,), verify, sign), normalise, DECODER
)
