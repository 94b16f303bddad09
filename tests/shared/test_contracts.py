"""The wire contracts: the courier event's field rules and the job the API hands to workers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.contracts import (
    TERMINAL_STATUSES,
    CourierEvent,
    EventType,
    ProblemCode,
    QueuedEvent,
    ReplayRef,
    decode_event,
    idempotency_key,
)
from shared.queue import deserialize, serialize


def payload(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "evt_01J",
        "event_type": "shipment.delivered",
        "occurred_at": "2026-11-22T10:15:00Z",
        "shipment": {"id": "shp_123", "order_id": "ord_9", "tracking_number": "1Z"},
        "location": {"lat": 52.52, "lon": 13.40},
        "data": {"signed_by": "R. Doe", "photos": [1, 2]},
    }
    event.update(changes)
    return event


def decode(event: dict[str, Any]) -> CourierEvent:
    return decode_event(json.dumps(event).encode())


def test_spec_example_event_decodes() -> None:
    event = decode(payload())
    assert event.event_id == "evt_01J"
    assert event.event_type is EventType.DELIVERED
    assert event.occurred_at == datetime(2026, 11, 22, 10, 15, tzinfo=UTC)
    assert event.shipment.tracking_number == "1Z"
    assert event.location is not None
    assert (event.location.lat, event.location.lon) == (52.52, 13.40)
    assert msgspec.json.decode(event.data) == {"signed_by": "R. Doe", "photos": [1, 2]}


def test_optional_fields_may_be_absent() -> None:
    event = payload(shipment={"id": "s", "order_id": "o"})
    del event["location"], event["data"]
    decoded = decode(event)
    assert decoded.location is None
    assert msgspec.json.decode(decoded.data) == {}
    assert decoded.shipment.tracking_number is None


def test_unknown_top_level_fields_are_ignored() -> None:
    assert decode(payload(courier_extra={"x": 1})).event_id == "evt_01J"


def test_offsets_other_than_utc_are_kept() -> None:
    event = decode(payload(occurred_at="2026-11-22T11:15:00+01:00"))
    assert event.occurred_at.utcoffset() == timedelta(hours=1)
    assert event.occurred_at == datetime(2026, 11, 22, 10, 15, tzinfo=UTC)


@pytest.mark.parametrize("value", ["2026-11-22T10:15:00", "2026-11-22", "10:15", "yesterday"])
def test_occurred_at_needs_an_rfc3339_offset(value: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.occurred_at"):
        decode(payload(occurred_at=value))


@pytest.mark.parametrize("event_id", ["e", "e" * 128, "évènement 1", "id with spaces", "😀"])
def test_event_id_of_1_to_128_printable_chars_is_accepted(event_id: str) -> None:
    assert decode(payload(event_id=event_id)).event_id == event_id


@pytest.mark.parametrize("event_id", ["", "e" * 129, "a\x00b", "a\nb", "a\tb", "a\x7fb", "a\x85b"])
def test_event_id_empty_too_long_or_with_control_chars_is_refused(event_id: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.event_id"):
        decode(payload(event_id=event_id))


def test_every_spec_event_type_is_accepted_and_nothing_else() -> None:
    spec = {
        "shipment.created",
        "shipment.picked_up",
        "shipment.in_transit",
        "shipment.out_for_delivery",
        "shipment.delivery_failed",
        "shipment.delivered",
        "shipment.returned",
        "shipment.cancelled",
    }
    assert {t.value for t in EventType} == spec
    for event_type in spec:
        assert decode(payload(event_type=event_type)).event_type.value == event_type
    with pytest.raises(msgspec.ValidationError, match=r"\$\.event_type"):
        decode(payload(event_type="shipment.lost"))


def test_status_is_the_event_type_suffix_and_terminal_ones_are_known() -> None:
    assert EventType.OUT_FOR_DELIVERY.status == "out_for_delivery"
    assert {"delivered", "returned", "cancelled"} == TERMINAL_STATUSES


@pytest.mark.parametrize(
    ("shipment", "path"),
    [
        ({"order_id": "o"}, r"\$\.shipment"),
        ({"id": "", "order_id": "o"}, r"\$\.shipment\.id"),
        ({"id": "s" * 129, "order_id": "o"}, r"\$\.shipment\.id"),
        ({"id": "s", "order_id": ""}, r"\$\.shipment\.order_id"),
        ({"id": "s", "order_id": "o", "tracking_number": "t" * 129}, r"tracking_number"),
    ],
)
def test_shipment_ids_are_1_to_128_chars(shipment: dict[str, Any], path: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=path):
        decode(payload(shipment=shipment))


@pytest.mark.parametrize(
    ("lat", "lon", "ok"),
    [
        (90, 180, True),
        (-90, -180, True),
        (90.0001, 0, False),
        (-90.0001, 0, False),
        (0, 180.0001, False),
        (0, -180.0001, False),
    ],
)
def test_location_bounds_are_inclusive(lat: float, lon: float, ok: bool) -> None:
    event = payload(location={"lat": lat, "lon": lon})
    if ok:
        assert decode(event).location is not None
    else:
        with pytest.raises(msgspec.ValidationError, match=r"\$\.location"):
            decode(event)


@pytest.mark.parametrize("data", [[], "text", 1, None])
def test_data_must_be_an_object(data: Any) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.data"):
        decode(payload(data=data))


@pytest.mark.parametrize(
    "body",
    [b"\xff", b'{"event_id": "\xff"}', json.dumps(payload()).encode()[:-1] + b',"x":"\xfe"}'],
    ids=["bare", "in-a-field", "in-an-ignored-field"],
)
def test_body_that_is_not_utf8_is_a_decode_error_not_a_validation_error(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError) as raised:
        decode_event(body)
    assert not isinstance(raised.value, msgspec.ValidationError)


def test_idempotency_key_is_source_colon_event_id() -> None:
    assert idempotency_key("acme", "evt:1") == "acme:evt:1"


@settings(max_examples=50, deadline=None)
@given(
    event_id=st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=128
    ),
    offset_minutes=st.integers(min_value=-14 * 60, max_value=14 * 60),
    request_id=st.text(min_size=1, max_size=40),
)
def test_queued_event_survives_the_msgpack_job_round_trip(
    event_id: str, offset_minutes: int, request_id: str
) -> None:
    """What the API enqueues is what a worker converts back (arq job format).

    The courier's body is MessagePack ``bin``: the worker decodes the very
    bytes the API verified.
    """
    occurred = datetime(2026, 11, 22, 10, 15, tzinfo=timezone(timedelta(minutes=offset_minutes)))
    event = decode(payload(event_id=event_id, occurred_at=occurred.isoformat()))
    job = QueuedEvent(
        idempotency_key=idempotency_key("acme", event_id),
        source="acme",
        event_id=event_id,
        body=msgspec.json.encode(event),
        request_id=request_id,
        received_at_ms=1_795_000_000_000,
        replay=ReplayRef(by="oncall", at_ms=1_795_000_000_001),
    )
    stored = serialize({"t": None, "f": "process_event", "a": (job,), "k": {}, "et": 1})

    back = msgspec.convert(deserialize(stored)["a"][0], QueuedEvent)

    assert back == job
    assert back.body == job.body
    # The body travels byte-exact, so the worker reads the sender's own offset.
    assert back.event.occurred_at == occurred
    assert back.event.occurred_at.utcoffset() == occurred.utcoffset()


def test_problem_codes_are_stable_strings() -> None:
    assert {code.value for code in ProblemCode} >= {
        "malformed_json",
        "signature_missing",
        "timestamp_out_of_tolerance",
        "signature_invalid",
        "unknown_source",
        "payload_too_large",
        "unsupported_media_type",
        "validation_failed",
        "queue_unavailable",
        "internal_error",
        "not_found",
        "method_not_allowed",
    }
