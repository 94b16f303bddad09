"""The carriers simulated traffic speaks besides the canonical format (docs/contract.md §3.4).

A :class:`~scripts.traffic.events.PlannedEvent` is rendered in one source's
dialect by :func:`render`: the canonical JSON for ``standard``/``hex``
sources, or the body EasyPost, UPS (Track Alert) or AfterShip would send for
that update. Each rendering also says which idempotency key and shipment the
gateway will file it under, so the observer of the load test, the chaos run
and the demo finds carrier events' outcomes exactly as it finds canonical ones.

:func:`traffic_sources` is the source configuration of the stacks that
generate this traffic (``gateway dev``, ``gateway loadtest``, ``gateway
chaos``): one canonical source plus one source per carrier, each with a fresh
secret. Statuses a carrier's built-in vocabulary lacks (EasyPost has no
"picked up", AfterShip no "returned") are mapped through the source's
``"statuses"``, exactly as an operator would.

Nothing here does I/O.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec
from msgspec import Struct

from shared.adapters.base import derived_event_id
from shared.contracts import EventType
from shared.signing import generate_secret

if TYPE_CHECKING:
    from scripts.traffic.events import PlannedEvent

__all__ = ["CANONICAL_SOURCE", "CARRIER_ADAPTERS", "Rendered", "render", "traffic_sources"]

CANONICAL_SOURCE: Final = "dev"
"""The canonical source of the stacks (first, so banners and defaults use it)."""
CARRIER_ADAPTERS: Final = ("easypost", "ups", "aftership")
"""The carriers simulated traffic speaks; each is a source of the same name."""

E = EventType
_CODES: Final[Mapping[str, Mapping[EventType, str]]] = {
    "easypost": {
        E.CREATED: "pre_transit",
        E.PICKED_UP: "picked_up",
        E.IN_TRANSIT: "in_transit",
        E.OUT_FOR_DELIVERY: "out_for_delivery",
        E.DELIVERY_FAILED: "failure",
        E.DELIVERED: "delivered",
        E.RETURNED: "return_to_sender",
        E.CANCELLED: "cancelled",
    },
    "ups": {
        E.CREATED: "M",
        E.PICKED_UP: "P",
        E.IN_TRANSIT: "I",
        E.OUT_FOR_DELIVERY: "O",
        E.DELIVERY_FAILED: "X",
        E.DELIVERED: "D",
        E.RETURNED: "RS",
        E.CANCELLED: "MV",
    },
    "aftership": {
        E.CREATED: "InfoReceived",
        E.PICKED_UP: "PickedUp",
        E.IN_TRANSIT: "InTransit",
        E.OUT_FOR_DELIVERY: "OutForDelivery",
        E.DELIVERY_FAILED: "AttemptFail",
        E.DELIVERED: "Delivered",
        E.RETURNED: "Returned",
        E.CANCELLED: "Cancelled",
    },
}
"""Each carrier's status code for each event type."""
_STATUSES: Final[Mapping[str, Mapping[str, str]]] = {
    "easypost": {"picked_up": "picked_up"},
    "ups": {},
    "aftership": {"PickedUp": "picked_up", "Returned": "returned", "Cancelled": "cancelled"},
}
"""The ``"statuses"`` of each carrier source: the codes above its built-in table lacks."""


class Rendered(Struct, frozen=True, kw_only=True):
    """A planned event as one source sends it, and where the gateway files it."""

    body: bytes
    event_id: str
    """The idempotency key is ``{source}:{event_id}`` (derived for UPS)."""
    shipment_id: str
    """The shipment is ``{source}:{shipment_id}`` (the tracking number for carriers)."""


def traffic_sources() -> dict[str, dict[str, Any]]:
    """``GATEWAY_SOURCES`` of a traffic stack, with fresh secrets (write it 0600, never print)."""
    sources: dict[str, dict[str, Any]] = {CANONICAL_SOURCE: {"secrets": [generate_secret()]}}
    for adapter in CARRIER_ADAPTERS:
        entry: dict[str, Any] = {"adapter": adapter, "secrets": [secrets.token_urlsafe(32)]}
        if _STATUSES[adapter]:
            entry["statuses"] = dict(_STATUSES[adapter])
        sources[adapter] = entry
    return sources


def render(event: PlannedEvent, adapter: str) -> Rendered:
    """``event`` in the dialect of ``adapter`` (``standard``/``hex``: the canonical body)."""
    if adapter not in _CODES:
        return Rendered(body=event.body(), event_id=event.event_id, shipment_id=event.shipment_id)
    code = _CODES[adapter][event.event_type]
    # Unique per shipment: a carrier's shipment is its tracking number.
    tracking = "1Z" + event.shipment_id.removeprefix("shp_")
    at = event.occurred_at.isoformat().replace("+00:00", "Z")
    event_id = event.event_id
    document: dict[str, Any]
    if adapter == "easypost":
        document = {
            "object": "Event",
            "id": event_id,
            "description": "tracker.updated",
            "result": {
                "object": "Tracker",
                "tracking_code": tracking,
                "status": code,
                "tracking_details": [{"datetime": at, "status": code}],
                "updated_at": at,
            },
        }
    elif adapter == "aftership":
        document = {
            "event": "tracking_update",
            "event_id": event_id,
            "msg": {
                "tracking_number": tracking,
                "tag": code,
                "order_id": event.order_id,
                "checkpoints": [{"checkpoint_time": at, "tag": code}],
                "updated_at": at,
            },
        }
    else:  # ups: no event id, no order id; the id is derived
        document = {
            "trackingNumber": tracking,
            "activityStatus": {"type": code},
            "gmtActivityDate": event.occurred_at.strftime("%Y%m%d"),
            "gmtActivityTime": event.occurred_at.strftime("%H%M%S"),
        }
        event_id = derived_event_id(tracking, code, event.occurred_at)
    return Rendered(body=msgspec.json.encode(document), event_id=event_id, shipment_id=tracking)
