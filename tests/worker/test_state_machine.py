"""The shipment rules (docs/contract.md §3.3) over every status pair, in both time orders.

The rules live only in the update pipeline of ``shared.storage.shipments``, so
every case runs against MongoDB: a shipment is stored with one status, then
the event is applied and the returned decision is checked.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import msgspec
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from shared.contracts import TERMINAL_STATUSES, CourierEvent, EventType
from shared.storage.mongo import Document
from shared.storage.shipments import Decision, Outcome, Shipments
from tests.factories import T0, make_event

TYPES = list(EventType)
PAIRS = list(itertools.product(TYPES, TYPES))
NOW = T0 + timedelta(days=1)


class Stored(msgspec.Struct, frozen=True):
    """A shipment as stored before the event: event ``e0`` of this type at ``T0``."""

    event_type: EventType
    order_id: str


def stored(event_type: EventType, *, order_id: str = "ord_1") -> Stored:
    return Stored(event_type, order_id)


Decide = Callable[[Stored | None, CourierEvent], Awaitable[Decision]]


@pytest.fixture
def decide(mongo_db: AsyncDatabase[Document]) -> Decide:
    """Store ``current`` as a fresh shipment, apply ``event`` to it; the decision."""
    shipments = Shipments(mongo_db)

    async def apply(current: Stored | None, event: CourierEvent) -> Decision:
        shipment_id = f"shp_{uuid.uuid4().hex[:8]}"
        event = msgspec.structs.replace(
            event, shipment=msgspec.structs.replace(event.shipment, id=shipment_id)
        )
        if current is not None:
            seed = make_event(
                "e0", current.event_type, shipment_id=shipment_id, order_id=current.order_id
            ).event
            assert await shipments.apply_event("acme", seed, now=NOW) == Decision(
                Outcome.APPLIED, current.event_type.status
            )
        return await shipments.apply_event("acme", event, now=NOW)

    return apply


@pytest.mark.parametrize(
    ("current", "incoming"), PAIRS, ids=[f"{a.status}->{b.status}" for a, b in PAIRS]
)
async def test_newer_event_moves_the_shipment_unless_it_leaves_a_terminal_status(
    decide: Decide, current: EventType, incoming: EventType
) -> None:
    event = make_event("e1", incoming, occurred_at=T0 + timedelta(hours=1)).event
    decision = await decide(stored(current), event)
    if current.status in TERMINAL_STATUSES and incoming.status != current.status:
        assert decision == Decision(Outcome.INVALID_TRANSITION, current.status)
    else:
        assert decision == Decision(Outcome.APPLIED, incoming.status)


@pytest.mark.parametrize(
    ("current", "incoming"), PAIRS, ids=[f"{a.status}->{b.status}" for a, b in PAIRS]
)
async def test_older_event_is_recorded_without_changing_the_status(
    decide: Decide, current: EventType, incoming: EventType
) -> None:
    event = make_event("e1", incoming, occurred_at=T0 - timedelta(hours=1)).event
    assert await decide(stored(current), event) == Decision(Outcome.RECORDED_STALE, current.status)


@pytest.mark.parametrize(
    ("current", "incoming"), PAIRS, ids=[f"{a.status}->{b.status}" for a, b in PAIRS]
)
async def test_event_at_the_same_time_counts_as_newer(
    decide: Decide, current: EventType, incoming: EventType
) -> None:
    decision = await decide(stored(current), make_event("e1", incoming, occurred_at=T0).event)
    if current.status in TERMINAL_STATUSES and incoming.status != current.status:
        assert decision.outcome is Outcome.INVALID_TRANSITION
    else:
        assert decision.outcome is Outcome.APPLIED


@pytest.mark.parametrize("incoming", TYPES)
async def test_first_event_of_a_shipment_creates_it(decide: Decide, incoming: EventType) -> None:
    assert await decide(None, make_event("e1", incoming).event) == Decision(
        Outcome.APPLIED, incoming.status
    )


@pytest.mark.parametrize("offset_h", [-1, 0, 1])
async def test_an_event_already_in_the_history_is_not_applied_again(
    decide: Decide, offset_h: int
) -> None:
    event = make_event("e0", EventType.CANCELLED, occurred_at=T0 + timedelta(hours=offset_h)).event
    assert await decide(stored(EventType.DELIVERED), event) == Decision(
        Outcome.ALREADY_APPLIED, "delivered"
    )


@pytest.mark.parametrize("offset_h", [-1, 0, 1])
async def test_an_event_for_another_order_is_an_order_mismatch(
    decide: Decide, offset_h: int
) -> None:
    event = make_event(
        "e1", EventType.IN_TRANSIT, occurred_at=T0 + timedelta(hours=offset_h), order_id="ord_2"
    ).event
    assert (await decide(stored(EventType.DELIVERED), event)).outcome is Outcome.ORDER_MISMATCH
    assert (await decide(stored(EventType.PICKED_UP), event)).outcome is Outcome.ORDER_MISMATCH


async def test_times_compare_at_the_millisecond_precision_mongodb_stores(decide: Decide) -> None:
    # Stored 10:00:00.000; the event at 10:00:00.000900 is "the same time", not newer-by-µs.
    event = make_event(
        "e1", EventType.IN_TRANSIT, occurred_at=T0 + timedelta(microseconds=900)
    ).event
    assert (await decide(stored(EventType.PICKED_UP), event)).outcome is Outcome.APPLIED
    older = make_event(
        "e2", EventType.IN_TRANSIT, occurred_at=T0 - timedelta(microseconds=100)
    ).event
    assert (await decide(stored(EventType.PICKED_UP), older)).outcome is Outcome.RECORDED_STALE
