"""The shipment state machine (SPEC §3.3) over every status pair, in both time orders."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from gateway_worker.state_machine import Decision, Outcome, decide
from shared.contracts import TERMINAL_STATUSES, EventType
from shared.storage.shipments import ShipmentState
from tests.worker.conftest import T0, make_event

TYPES = list(EventType)
PAIRS = list(itertools.product(TYPES, TYPES))


def stored(event_type: EventType, *, order_id: str = "ord_1") -> ShipmentState:
    return ShipmentState(
        status=event_type.status, order_id=order_id, last_event_at=T0, event_ids=frozenset({"e0"})
    )


@pytest.mark.parametrize(
    ("current", "incoming"), PAIRS, ids=[f"{a.status}->{b.status}" for a, b in PAIRS]
)
def test_newer_event_moves_the_shipment_unless_it_leaves_a_terminal_status(
    current: EventType, incoming: EventType
) -> None:
    event = make_event("e1", incoming, occurred_at=T0 + timedelta(hours=1)).event
    decision = decide(stored(current), event)
    if current.status in TERMINAL_STATUSES and incoming.status != current.status:
        assert decision == Decision(Outcome.INVALID_TRANSITION, current.status)
    else:
        assert decision == Decision(Outcome.APPLIED, incoming.status)


@pytest.mark.parametrize(
    ("current", "incoming"), PAIRS, ids=[f"{a.status}->{b.status}" for a, b in PAIRS]
)
def test_older_event_is_recorded_without_changing_the_status(
    current: EventType, incoming: EventType
) -> None:
    event = make_event("e1", incoming, occurred_at=T0 - timedelta(hours=1)).event
    assert decide(stored(current), event) == Decision(Outcome.RECORDED_STALE, current.status)


@pytest.mark.parametrize(
    ("current", "incoming"), PAIRS, ids=[f"{a.status}->{b.status}" for a, b in PAIRS]
)
def test_event_at_the_same_time_counts_as_newer(current: EventType, incoming: EventType) -> None:
    decision = decide(stored(current), make_event("e1", incoming, occurred_at=T0).event)
    if current.status in TERMINAL_STATUSES and incoming.status != current.status:
        assert decision.outcome is Outcome.INVALID_TRANSITION
    else:
        assert decision.outcome is Outcome.APPLIED


@pytest.mark.parametrize("incoming", TYPES)
def test_first_event_of_a_shipment_creates_it(incoming: EventType) -> None:
    assert decide(None, make_event("e1", incoming).event) == Decision(
        Outcome.APPLIED, incoming.status
    )


@pytest.mark.parametrize("offset_h", [-1, 0, 1])
def test_an_event_already_in_the_history_is_not_applied_again(offset_h: int) -> None:
    event = make_event("e0", EventType.CANCELLED, occurred_at=T0 + timedelta(hours=offset_h)).event
    assert decide(stored(EventType.DELIVERED), event) == Decision(
        Outcome.ALREADY_APPLIED, "delivered"
    )


@pytest.mark.parametrize("offset_h", [-1, 0, 1])
def test_an_event_for_another_order_is_an_order_mismatch(offset_h: int) -> None:
    event = make_event(
        "e1", EventType.IN_TRANSIT, occurred_at=T0 + timedelta(hours=offset_h), order_id="ord_2"
    ).event
    assert decide(stored(EventType.DELIVERED), event).outcome is Outcome.ORDER_MISMATCH
    assert decide(stored(EventType.PICKED_UP), event).outcome is Outcome.ORDER_MISMATCH


def test_times_compare_at_the_millisecond_precision_mongodb_stores() -> None:
    # Stored 10:00:00.000; the event at 10:00:00.000900 is "the same time", not newer-by-µs.
    event = make_event(
        "e1", EventType.IN_TRANSIT, occurred_at=T0 + timedelta(microseconds=900)
    ).event
    assert decide(stored(EventType.PICKED_UP), event).outcome is Outcome.APPLIED
    older = make_event(
        "e2", EventType.IN_TRANSIT, occurred_at=T0 - timedelta(microseconds=100)
    ).event
    assert decide(stored(EventType.PICKED_UP), older).outcome is Outcome.RECORDED_STALE
