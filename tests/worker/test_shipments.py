"""The projection's server-side update writes what its verdict says, in one round trip."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import timedelta

import msgspec
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from shared.contracts import CourierEvent, EventType, Shipment
from shared.storage.mongo import SHIPMENTS, Document
from shared.storage.shipments import HISTORY_LIMIT, Decision, Outcome, Shipments
from tests.factories import DELIVERY_WITH_A_RETRY, T0, make_event

NOW = T0 + timedelta(days=1)
ORDERS = {"older": -1, "same": 0, "newer": 1}


async def test_each_outcome_writes_exactly_its_effect_on_every_status_pair_and_time_order(
    mongo_db: AsyncDatabase[Document],
) -> None:
    shipments = Shipments(mongo_db)
    cases = list(itertools.product(EventType, EventType, ORDERS.items()))
    for index, (current, incoming, (order, hours)) in enumerate(cases):
        shipment_id = f"shp_{index}"
        seed = make_event(f"seed_{index}", current, shipment_id=shipment_id).event
        await shipments.apply_event("acme", seed, now=NOW)
        event = make_event(
            f"evt_{index}",
            incoming,
            shipment_id=shipment_id,
            occurred_at=T0 + timedelta(hours=hours),
        ).event
        stored = await shipments.get("acme", shipment_id)
        decision = await shipments.apply_event("acme", event, now=NOW)
        after = await shipments.get("acme", shipment_id)
        assert stored is not None
        assert after is not None
        case = f"{current.status}->{incoming.status} ({order})"
        assert after["status"] == decision.status, case
        if decision.outcome is Outcome.APPLIED:
            assert after["status"] == incoming.status, case
            assert after["last_event_id"] == event.event_id, case
            assert after["last_event_at"] == event.occurred_at, case
        elif decision.outcome is Outcome.RECORDED_STALE:
            assert after["status"] == current.status, case
            assert after["last_event_id"] == seed.event_id, case
        else:
            assert decision.outcome is Outcome.INVALID_TRANSITION, case
            assert after == stored, case
            continue
        assert [h["event_id"] for h in after["history"]] == [seed.event_id, event.event_id], case


async def test_reapplying_an_event_changes_nothing(mongo_db: AsyncDatabase[Document]) -> None:
    shipments = Shipments(mongo_db)
    event = make_event("e1", EventType.PICKED_UP).event
    await shipments.apply_event("acme", event, now=NOW)
    first = await shipments.get("acme", "shp_1")
    decision = await shipments.apply_event("acme", event, now=NOW + timedelta(minutes=5))
    assert decision == Decision(Outcome.ALREADY_APPLIED, "picked_up")
    assert await shipments.get("acme", "shp_1") == first


async def test_an_event_of_another_order_leaves_the_shipment_untouched(
    mongo_db: AsyncDatabase[Document],
) -> None:
    shipments = Shipments(mongo_db)
    await shipments.apply_event("acme", make_event("e1").event, now=NOW)
    first = await shipments.get("acme", "shp_1")
    other = make_event(
        "e2", EventType.IN_TRANSIT, order_id="ord_other", occurred_at=T0 + timedelta(hours=1)
    ).event
    decision = await shipments.apply_event("acme", other, now=NOW)
    assert decision == Decision(Outcome.ORDER_MISMATCH, "picked_up")
    assert await shipments.get("acme", "shp_1") == first


async def test_new_shipment_document_has_every_contract_field(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await Shipments(mongo_db).apply_event("acme", make_event("e1").event, now=NOW)
    document = await mongo_db[SHIPMENTS].find_one({"_id": "acme:shp_1"})
    assert document == {
        "_id": "acme:shp_1",
        "source": "acme",
        "shipment_id": "shp_1",
        "order_id": "ord_1",
        "tracking_number": "1Z999",
        "status": "picked_up",
        "last_event_id": "e1",
        "last_event_at": T0,
        "history": [
            {"event_id": "e1", "status": "picked_up", "occurred_at": T0, "applied_at": NOW}
        ],
        "created_at": NOW,
        "updated_at": NOW,
        "last_apply": {"event_id": "e1", "outcome": "applied", "status": "picked_up"},
        "recent_applies": [{"event_id": "e1", "outcome": "applied", "status": "picked_up"}],
    }


async def test_history_keeps_the_last_fifty_applied_events(
    mongo_db: AsyncDatabase[Document],
) -> None:
    shipments = Shipments(mongo_db)
    for n in range(HISTORY_LIMIT + 5):
        event = make_event(f"e{n}", EventType.IN_TRANSIT, occurred_at=T0 + timedelta(minutes=n))
        await shipments.apply_event("acme", event.event, now=NOW)
    document = await shipments.get("acme", "shp_1")
    assert document is not None
    assert [h["event_id"] for h in document["history"]] == [f"e{n}" for n in range(5, 55)]


async def test_courier_strings_starting_with_a_dollar_are_stored_literally(
    mongo_db: AsyncDatabase[Document],
) -> None:
    event = make_event("$status", EventType.PICKED_UP, order_id="$order_id").event
    await Shipments(mongo_db).apply_event("acme", event, now=NOW)
    document = await Shipments(mongo_db).get("acme", "shp_1")
    assert document is not None
    assert (document["last_event_id"], document["order_id"]) == ("$status", "$order_id")


async def test_concurrent_out_of_order_events_end_at_the_newest_and_each_is_in_history_once(
    mongo_db: AsyncDatabase[Document],
) -> None:
    shipments = Shipments(mongo_db)
    events = [
        make_event(f"e{n}", kind, occurred_at=T0 + timedelta(minutes=n)).event
        for n, kind in enumerate(DELIVERY_WITH_A_RETRY)
    ]
    shuffled = random.Random(5).sample(events, len(events))
    # Every event twice, all at once: duplicates and races included.
    results = await asyncio.gather(
        *(shipments.apply_event("acme", e, now=NOW) for e in shuffled + shuffled)
    )
    document = await shipments.get("acme", "shp_1")
    assert document is not None
    assert document["status"] == "delivered"
    assert document["last_event_at"] == events[-1].occurred_at
    assert sorted(h["event_id"] for h in document["history"]) == sorted(e.event_id for e in events)
    outcomes = [decision.outcome for decision in results]
    assert outcomes.count(Outcome.ALREADY_APPLIED) == len(events)


@pytest.mark.parametrize("tracking", [None, "1Z-NEW"])
async def test_tracking_number_is_kept_unless_a_newer_event_brings_one(
    mongo_db: AsyncDatabase[Document], tracking: str | None
) -> None:
    shipments = Shipments(mongo_db)
    await shipments.apply_event("acme", make_event("e1").event, now=NOW)
    queued = make_event("e2", EventType.IN_TRANSIT, occurred_at=T0 + timedelta(hours=1))
    shipment = queued.event.shipment.__class__(
        id="shp_1", order_id="ord_1", tracking_number=tracking
    )
    event = queued.event.__class__(
        event_id="e2",
        event_type=EventType.IN_TRANSIT,
        occurred_at=T0 + timedelta(hours=1),
        shipment=shipment,
    )
    await shipments.apply_event("acme", event, now=NOW)
    document = await shipments.get("acme", "shp_1")
    assert document is not None
    assert document["tracking_number"] == (tracking or "1Z999")


async def test_an_event_without_an_order_id_takes_no_part_in_the_order_check(
    mongo_db: AsyncDatabase[Document],
) -> None:
    """A carrier event with no order id (empty) neither mismatches nor sets one (contract §3.4)."""
    shipments = Shipments(mongo_db)
    first = _without_order(make_event("c1", EventType.PICKED_UP).event)
    assert (await shipments.apply_event("ups", first, now=NOW)).outcome is Outcome.APPLIED
    stored = await shipments.get("ups", "shp_1")
    assert stored is not None
    assert stored["order_id"] is None
    # An order id arriving later is recorded, and from then on it is checked.
    later = make_event("c2", EventType.IN_TRANSIT, order_id="ord_7", occurred_at=T0 + HOUR).event
    assert (await shipments.apply_event("ups", later, now=NOW)).outcome is Outcome.APPLIED
    stored = await shipments.get("ups", "shp_1")
    assert stored is not None
    assert stored["order_id"] == "ord_7"
    unknown = make_event("c3", EventType.OUT_FOR_DELIVERY, occurred_at=T0 + 2 * HOUR).event
    decision = await shipments.apply_event("ups", _without_order(unknown), now=NOW)
    assert decision.outcome is Outcome.APPLIED
    other = make_event("c4", EventType.DELIVERED, order_id="ord_8", occurred_at=T0 + 3 * HOUR)
    decision = await shipments.apply_event("ups", other.event, now=NOW)
    assert decision == Decision(Outcome.ORDER_MISMATCH, "out_for_delivery")


HOUR = timedelta(hours=1)


def _without_order(event: CourierEvent) -> CourierEvent:
    """``event`` as the worker builds a carrier's update that names no order (empty id)."""
    shipment = Shipment(id=event.shipment.id, order_id="", tracking_number="1Z999")
    return msgspec.structs.replace(event, shipment=shipment)
