"""Each built-in carrier as its documentation describes it, for the adapter tests.

What each carrier's example must normalise to is data, one entry per carrier
in ``carriers.json`` beside this module. The signers here follow each
carrier's published recipe with hashlib, hmac and base64 directly; they never
call the adapters' own signing code, so a test that verifies their output
checks the adapter against the carrier, not against itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import unicodedata
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from shared.adapters.base import Adapter
from shared.adapters.config import parse_source_config
from shared.adapters.pointer import parse_pointer
from shared.adapters.registry import build_adapter
from shared.contracts import EventType

PAYLOADS = Path(__file__).parent / "payloads"
NOW = 1_795_341_000
TOLERANCE_S = 300
SECRET = "carrier-secret-0123456789abcdef"
OTHER_SECRET = "retired-secret-fedcba9876543210"

Signer = Callable[[bytes, str, int], dict[str, str]]
Document = dict[str, Any]


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def document(name: str) -> Document:
    loaded: Document = msgspec.json.decode(payload(name))
    return loaded


def encode(doc: Document) -> bytes:
    return msgspec.json.encode(doc)


def lower(headers: dict[str, str]) -> dict[str, str]:
    """Headers by lower-case name, as the API hands them to adapters."""
    return {name.lower(): value for name, value in headers.items()}


def adapter_for(raw: dict[str, Any], *, tolerance_s: int = TOLERANCE_S) -> Adapter:
    return build_adapter(parse_source_config("carrier", raw), tolerance_s=tolerance_s)


def easypost_signature(body: bytes, secret: str, now: int) -> dict[str, str]:
    # EasyPost's client libraries: NFKD-normalise the secret, UTF-8, HMAC-SHA256, hex.
    key = unicodedata.normalize("NFKD", secret).encode("utf-8")
    digest = hmac.new(key, body, hashlib.sha256).hexdigest()
    return lower({"X-Hmac-Signature": f"hmac-sha256-hex={digest}"})


def aftership_signature(body: bytes, secret: str, now: int) -> dict[str, str]:
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return lower({"aftership-hmac-sha256": base64.b64encode(digest).decode("ascii")})


def shopify_signature(body: bytes, secret: str, now: int) -> dict[str, str]:
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return lower(
        {
            "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode("ascii"),
            "X-Shopify-Topic": "fulfillment_events/create",
        }
    )


def ups_signature(body: bytes, secret: str, now: int) -> dict[str, str]:
    return lower({"credential": secret})


def shippo_signature(body: bytes, secret: str, now: int) -> dict[str, str]:
    signed = str(now).encode() + b"." + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return lower({"Shippo-Auth-Signature": f"t={now},v1={digest}"})


def fedex_style_signature(body: bytes, secret: str, now: int) -> dict[str, str]:
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return lower({"fdx-signature": base64.b64encode(digest).decode("ascii")})


def dhl_style_signature(body: bytes, secret: str, now: int) -> dict[str, str]:
    return lower({"DHL-API-Key": secret})


def set_path(doc: Document, path: tuple[str | int, ...], value: Any) -> Document:
    """A deep copy of ``doc`` with ``value`` at ``path`` (``...`` as value deletes it)."""
    copy: Document = msgspec.json.decode(msgspec.json.encode(doc))
    node: Any = copy
    for step in path[:-1]:
        node = node[step]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return copy


FEDEX_STYLE_CONFIG: dict[str, Any] = {
    "adapter": "generic",
    "secrets": [SECRET],
    "signature": {
        "kind": "hmac-sha256",
        "header": "fdx-signature",
        "encoding": "base64",
        "prefix": "",
    },
    "fields": {
        "event_id": "/eventId",
        "tracking_number": "/trackingNumber",
        "status": "/scan/code",
        "occurred_at": "/scan/time",
        "order_id": "/reference",
    },
    "statuses": {"PU": "picked_up", "IT": "in_transit", "DL": "delivered"},
}

DHL_STYLE_CONFIG: dict[str, Any] = {
    "adapter": "generic",
    "secrets": [SECRET],
    "signature": {"kind": "token", "header": "DHL-API-Key"},
    "fields": {
        "tracking_number": "/shipmentTrackingNumber",
        "status": "/events/0/statusCode",
        "occurred_at": "/events/0/timestamp",
    },
    "statuses": {
        "pre-transit": "created",
        "transit": "in_transit",
        "delivered": "delivered",
        "failure": "delivery_failed",
        "returned": "returned",
    },
}


SIGNERS: dict[str, Signer] = {
    "easypost": easypost_signature,
    "aftership": aftership_signature,
    "shopify": shopify_signature,
    "ups": ups_signature,
    "shippo": shippo_signature,
    "generic-fedex-style": fedex_style_signature,
    "generic-dhl-style": dhl_style_signature,
}
GENERIC_CONFIGS: dict[str, dict[str, Any]] = {
    "generic-fedex-style": FEDEX_STYLE_CONFIG,
    "generic-dhl-style": DHL_STYLE_CONFIG,
}


def path_of(pointer: str) -> tuple[str | int, ...]:
    """A JSON Pointer as a :func:`set_path` path (array indices as integers)."""
    return tuple(int(token) if token.isdigit() else token for token in parse_pointer(pointer))


class Carrier(msgspec.Struct, frozen=True, kw_only=True):
    """One built-in carrier (or generic example): its example and what it must normalise to.

    The expectations are data, one entry per carrier in ``carriers.json``
    beside this module; the signer is this module's, by name.
    """

    name: str = ""
    """The key of its ``carriers.json`` entry."""
    example: str
    header: str
    """The (lower-case) header that carries the signature."""
    status: str
    """The JSON Pointer of the carrier status in the example."""
    tracking_number: str
    carrier_status: str
    event_type: EventType
    occurred_at: datetime
    event_id: str | None
    """``None``: the carrier sends none and the id is derived."""
    order_id: str | None
    pointers: tuple[str, ...] = msgspec.field(default=(), name="required")
    """The fields whose absence the 422 must name, by JSON Pointer."""
    ignored: Document | None = None
    """A verified notification of the same carrier that is not a tracking update."""

    @property
    def config(self) -> dict[str, Any]:
        return GENERIC_CONFIGS.get(self.name) or {"adapter": self.name, "secrets": [SECRET]}

    def sign(self, body: bytes, secret: str, now: int) -> dict[str, str]:
        return SIGNERS[self.name](body, secret, now)

    @property
    def status_path(self) -> tuple[str | int, ...]:
        return path_of(self.status)

    @property
    def required(self) -> dict[tuple[str | int, ...], str]:
        """Body path removed -> the JSON Pointer the 422 must name."""
        return {path_of(pointer): pointer for pointer in self.pointers}


CARRIERS: tuple[Carrier, ...] = tuple(
    msgspec.structs.replace(carrier, name=name)
    for name, carrier in msgspec.json.decode(
        (Path(__file__).parent / "carriers.json").read_bytes(), type=dict[str, Carrier]
    ).items()
)

BY_NAME = {carrier.name: carrier for carrier in CARRIERS}
