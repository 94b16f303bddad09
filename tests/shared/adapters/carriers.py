"""Each built-in carrier as its documentation describes it, for the adapter tests.

The signers here follow each carrier's published recipe with hashlib, hmac and
base64 directly; they never call the adapters' own signing code, so a test that
verifies their output checks the adapter against the carrier, not against itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from shared.adapters.base import Adapter
from shared.adapters.config import parse_source_config
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


@dataclass(frozen=True)
class Carrier:
    """One built-in carrier (or generic example): its config, example and expectations."""

    name: str
    config: dict[str, Any]
    example: str
    sign: Signer
    header: str
    """The (lower-case) header that carries the signature."""
    status_path: tuple[str | int, ...]
    tracking_number: str
    carrier_status: str
    event_type: EventType
    occurred_at: datetime
    event_id: str | None
    """``None``: the carrier sends none and the id is derived."""
    order_id: str | None
    required: dict[tuple[str | int, ...], str] = field(default_factory=dict)
    """Body path removed -> the JSON Pointer the 422 must name."""
    ignored: Document | None = None
    """A verified notification of the same carrier that is not a tracking update."""


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


CARRIERS: tuple[Carrier, ...] = (
    Carrier(
        name="easypost",
        config={"adapter": "easypost", "secrets": [SECRET]},
        example="easypost_tracker_updated.json",
        sign=easypost_signature,
        header="x-hmac-signature",
        status_path=("result", "status"),
        tracking_number="EZ4000000004",
        carrier_status="out_for_delivery",
        event_type=EventType.OUT_FOR_DELIVERY,
        occurred_at=_at("2026-11-22T10:15:00+00:00"),
        event_id="evt_8a1c2e0b4f6d11ef9d3a0242ac120002",
        order_id=None,
        required={
            ("id",): "/id",
            ("result", "tracking_code"): "/result/tracking_code",
            ("result", "status"): "/result/status",
        },
        ignored={"object": "Event", "id": "evt_2", "description": "batch.updated", "result": {}},
    ),
    Carrier(
        name="aftership",
        config={"adapter": "aftership", "secrets": [SECRET]},
        example="aftership_tracking_update.json",
        sign=aftership_signature,
        header="aftership-hmac-sha256",
        status_path=("msg", "tag"),
        tracking_number="9400111899223344556677",
        carrier_status="InTransit",
        event_type=EventType.IN_TRANSIT,
        occurred_at=_at("2026-11-22T04:12:00-05:00"),
        event_id="5b0a6c7e-2f41-4c1e-9d7a-3e8f1b2c4d5e",
        order_id="ORD-10045",
        required={
            ("event_id",): "/event_id",
            ("msg", "tracking_number"): "/msg/tracking_number",
            ("msg", "tag"): "/msg/tag",
        },
        ignored={"event": "edd_revise", "event_id": "e1", "msg": {"tracking_number": "X"}},
    ),
    Carrier(
        name="shopify",
        config={"adapter": "shopify", "secrets": [SECRET]},
        example="shopify_fulfillment_event.json",
        sign=shopify_signature,
        header="x-shopify-hmac-sha256",
        status_path=("status",),
        tracking_number="255858046",
        carrier_status="in_transit",
        event_type=EventType.IN_TRANSIT,
        occurred_at=_at("2026-11-22T05:12:00-05:00"),
        event_id="944956395",
        order_id="450789469",
        required={
            ("id",): "/id",
            ("status",): "/status",
            ("happened_at",): "/happened_at",
        },
        ignored={"id": 450789469, "email": "bob@example.com", "financial_status": "paid"},
    ),
    Carrier(
        name="ups",
        config={"adapter": "ups", "secrets": [SECRET]},
        example="ups_track_alert.json",
        sign=ups_signature,
        header="credential",
        status_path=("activityStatus", "type"),
        tracking_number="1Z999AA10123456784",
        carrier_status="I",
        event_type=EventType.IN_TRANSIT,
        occurred_at=_at("2026-11-22T12:15:00+00:00"),
        event_id=None,
        order_id=None,
        required={
            ("trackingNumber",): "/trackingNumber",
            ("activityStatus", "type"): "/activityStatus/type",
            ("gmtActivityDate",): "/gmtActivityDate",
            ("gmtActivityTime",): "/gmtActivityTime",
        },
    ),
    Carrier(
        name="shippo",
        config={"adapter": "shippo", "secrets": [SECRET]},
        example="shippo_track_updated.json",
        sign=shippo_signature,
        header="shippo-auth-signature",
        status_path=("data", "tracking_status", "status"),
        tracking_number="92055901755477000000000015",
        carrier_status="DELIVERED",
        event_type=EventType.DELIVERED,
        occurred_at=_at("2026-11-22T14:02:00+00:00"),
        event_id=None,
        order_id=None,
        required={
            ("data", "tracking_number"): "/data/tracking_number",
            ("data", "tracking_status", "status"): "/data/tracking_status/status",
            ("data", "tracking_status", "status_date"): "/data/tracking_status/status_date",
        },
        ignored={"event": "transaction_created", "test": False, "data": {"object_id": "t1"}},
    ),
    Carrier(
        name="generic-fedex-style",
        config=FEDEX_STYLE_CONFIG,
        example="fedex_style.json",
        sign=fedex_style_signature,
        header="fdx-signature",
        status_path=("scan", "code"),
        tracking_number="794600000000",
        carrier_status="PU",
        event_type=EventType.PICKED_UP,
        occurred_at=_at("2026-11-22T08:45:00-06:00"),
        event_id="fdx-0b6c1f7e-55aa-4e1d-8c9f-1a2b3c4d5e6f",
        order_id="ORD-20231",
        required={
            ("eventId",): "/eventId",
            ("trackingNumber",): "/trackingNumber",
            ("scan", "code"): "/scan/code",
            ("scan", "time"): "/scan/time",
        },
    ),
    Carrier(
        name="generic-dhl-style",
        config=DHL_STYLE_CONFIG,
        example="dhl_style.json",
        sign=dhl_style_signature,
        header="dhl-api-key",
        status_path=("events", 0, "statusCode"),
        tracking_number="1234567890",
        carrier_status="transit",
        event_type=EventType.IN_TRANSIT,
        occurred_at=_at("2026-11-22T10:00:00+00:00"),
        event_id=None,
        order_id=None,
        required={
            ("shipmentTrackingNumber",): "/shipmentTrackingNumber",
            ("events", 0, "statusCode"): "/events/0/statusCode",
            ("events", 0, "timestamp"): "/events/0/timestamp",
        },
    ),
)

BY_NAME = {carrier.name: carrier for carrier in CARRIERS}
