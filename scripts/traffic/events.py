"""What simulated couriers send: shipment lifecycles as signed-ready event bodies.

The one traffic generator of the proof tooling and the demo: ``gateway
loadtest`` (:class:`EventStream`, one per Locust user), ``gateway chaos``
(:class:`ShipmentPlanner`), ``gateway bench-worker`` (:func:`plan_lifecycle`).

Each simulated courier works through shipment lifecycles (created → … →
delivered / returned / cancelled) with ``occurred_at`` increasing along the
lifecycle, so the only terminal event of a shipment is its newest one and no
event is an ``invalid_transition``: every accepted event should succeed,
whatever order the workers apply them in. On top of that:

* **resends** — with probability ``duplicate_ratio`` a request repeats an
  earlier request of the same courier byte for byte (same body, same
  ``webhook-id``, fresh timestamp and signature), as a courier retrying a
  webhook does; the gateway must answer ``200 duplicate``;
* **dialects** — a stream speaks the canonical format or one carrier's
  (:mod:`scripts.traffic.carriers`: EasyPost, UPS, AfterShip), the same
  lifecycles rendered as that carrier sends them;
* **out-of-order pairs** — with probability ``out_of_order_ratio`` two
  consecutive events of a lifecycle are sent newer first; the older one must
  still be recorded in the shipment's history without changing its status.

Nothing here does I/O.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import msgspec
from msgspec import Struct

from scripts.traffic.carriers import render
from shared.contracts import EventType

__all__ = [
    "LIFECYCLES",
    "EventStream",
    "Outgoing",
    "PlannedEvent",
    "ShipmentPlanner",
    "plan_lifecycle",
    "send_order",
]

E = EventType
LIFECYCLES: Final[tuple[tuple[tuple[EventType, ...], int], ...]] = (
    ((E.CREATED, E.PICKED_UP, E.IN_TRANSIT, E.OUT_FOR_DELIVERY, E.DELIVERED), 6),
    (
        (
            E.CREATED,
            E.PICKED_UP,
            E.IN_TRANSIT,
            E.OUT_FOR_DELIVERY,
            E.DELIVERY_FAILED,
            E.OUT_FOR_DELIVERY,
            E.DELIVERED,
        ),
        2,
    ),
    (
        (
            E.CREATED,
            E.PICKED_UP,
            E.IN_TRANSIT,
            E.OUT_FOR_DELIVERY,
            E.DELIVERY_FAILED,
            E.RETURNED,
        ),
        1,
    ),
    ((E.CREATED, E.CANCELLED), 1),
)
"""Event-type sequences of one shipment, with their relative weights."""

Kind = Literal["new", "resend", "out_of_order"]


class PlannedEvent(Struct, frozen=True, kw_only=True):
    """One courier event of a planned lifecycle."""

    event_id: str
    event_type: EventType
    occurred_at: datetime
    shipment_id: str
    order_id: str
    tracking_number: str
    location: tuple[float, float] | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)

    def body(self) -> bytes:
        """The JSON body a courier would POST (docs/contract.md §3.1)."""
        event: dict[str, Any] = {
            "event_id": self.event_id,
            "event_type": self.event_type.value,
            "occurred_at": self.occurred_at.isoformat().replace("+00:00", "Z"),
            "shipment": {
                "id": self.shipment_id,
                "order_id": self.order_id,
                "tracking_number": self.tracking_number,
            },
        }
        if self.location is not None:
            event["location"] = {"lat": self.location[0], "lon": self.location[1]}
        if self.data:
            event["data"] = self.data
        return msgspec.json.encode(event)


class Outgoing(Struct, frozen=True, kw_only=True):
    """One request to send: the exact body and ``webhook-id``, and why it is sent.

    ``event_id`` and ``shipment_id`` are those the gateway files it under.
    """

    event_id: str
    shipment_id: str
    msg_id: str
    body: bytes
    kind: Kind


def plan_lifecycle(
    rng: random.Random, prefix: str, serial: int, start: datetime
) -> list[PlannedEvent]:
    """One shipment's events in ``occurred_at`` order, the first at ``start``.

    Steps are 5 to 90 minutes apart (whole seconds), so no two events of a
    shipment share a time and the terminal event is always the newest.
    """
    types = rng.choices([t for t, _ in LIFECYCLES], weights=[w for _, w in LIFECYCLES])[0]
    shipment_id = f"shp_{prefix}_{serial}"
    order_id = f"ord_{prefix}_{serial}"
    tracking = f"1Z{rng.randrange(10**9):09d}"
    events: list[PlannedEvent] = []
    at = start.replace(microsecond=0)
    for step, event_type in enumerate(types):
        location = None
        if event_type not in (E.CREATED, E.CANCELLED) and rng.random() < 0.7:
            location = (round(rng.uniform(47, 55), 5), round(rng.uniform(6, 15), 5))
        data: dict[str, Any] = {}
        if event_type == E.DELIVERED:
            data = {"signed_by": rng.choice(["front door", "neighbour", "reception"])}
        elif event_type == E.DELIVERY_FAILED:
            data = {"reason": rng.choice(["not home", "address not found"]), "attempt": 1}
        events.append(
            PlannedEvent(
                event_id=f"evt_{prefix}_{serial}_{step}",
                event_type=event_type,
                occurred_at=at,
                shipment_id=shipment_id,
                order_id=order_id,
                tracking_number=tracking,
                location=location,
                data=data,
            )
        )
        at += timedelta(seconds=rng.randint(300, 5400))
    return events


def send_order(
    events: list[PlannedEvent], rng: random.Random, out_of_order_ratio: float
) -> list[tuple[PlannedEvent, bool]]:
    """``events`` in sending order: each adjacent pair swapped with ``out_of_order_ratio``.

    The flag marks events sent out of order (both members of a swapped pair).
    A pair never overlaps another.
    """
    order: list[tuple[PlannedEvent, bool]] = []
    index = 0
    while index < len(events):
        if index + 1 < len(events) and rng.random() < out_of_order_ratio:
            order += [(events[index + 1], True), (events[index], True)]
            index += 2
        else:
            order.append((events[index], False))
            index += 1
    return order


@dataclass(eq=False)
class EventStream:
    """The requests of one simulated courier, one :meth:`next` call per request.

    ``adapter`` is the dialect the courier speaks (:mod:`scripts.traffic.carriers`):
    ``standard`` (the canonical body), ``easypost``, ``ups`` or ``aftership``.
    ``Outgoing.event_id`` and ``shipment_id`` are then what the gateway files
    the request under (a UPS id is derived, a carrier's shipment is its
    tracking number).
    """

    rng: random.Random
    prefix: str
    _: KW_ONLY
    duplicate_ratio: float
    out_of_order_ratio: float
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    resend_window: int = 64
    adapter: str = "standard"
    _serial: int = field(default=0, init=False, repr=False)
    _pending: deque[tuple[PlannedEvent, bool]] = field(
        default_factory=deque, init=False, repr=False
    )
    _sent: deque[Outgoing] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._sent = deque(maxlen=self.resend_window)

    def next(self) -> Outgoing:
        """The next request: a resend of an earlier one, or the next planned event."""
        if self._sent and self.rng.random() < self.duplicate_ratio:
            earlier = self.rng.choice(self._sent)
            return msgspec.structs.replace(earlier, kind="resend")
        if not self._pending:
            self._serial += 1
            start = self.now() - timedelta(hours=12) + timedelta(seconds=self.rng.randint(0, 3600))
            lifecycle = plan_lifecycle(self.rng, self.prefix, self._serial, start)
            self._pending.extend(send_order(lifecycle, self.rng, self.out_of_order_ratio))
        event, swapped = self._pending.popleft()
        rendered = render(event, self.adapter)
        outgoing = Outgoing(
            event_id=rendered.event_id,
            shipment_id=rendered.shipment_id,
            msg_id=f"msg_{event.event_id}",
            body=rendered.body,
            kind="out_of_order" if swapped else "new",
        )
        self._sent.append(outgoing)
        return outgoing


class ShipmentPlanner:
    """Interleaves the lifecycles of ``parallel`` shipments, reproducibly from ``rng``.

    Each shipment's events come in ``occurred_at`` order; which shipment sends
    next is random, so many lifecycles are in flight at once.
    """

    def __init__(self, rng: random.Random, run_id: str, *, parallel: int = 40) -> None:
        self._rng = rng
        self._run_id = run_id
        self._serial = 0
        self._base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        self._active: list[list[PlannedEvent]] = [self._lifecycle() for _ in range(parallel)]

    def next(self) -> PlannedEvent:
        """The next event of a randomly chosen active shipment."""
        slot = self._rng.randrange(len(self._active))
        events = self._active[slot]
        event = events.pop(0)
        if not events:
            self._active[slot] = self._lifecycle()
        return event

    def _lifecycle(self) -> list[PlannedEvent]:
        self._serial += 1
        start = self._base + timedelta(seconds=self._serial)
        return plan_lifecycle(self._rng, self._run_id, self._serial, start)
