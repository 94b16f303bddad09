"""Rules particular to one carrier: key normalisation, time fields, fallbacks, timestamps."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from shared.adapters.base import Ignored, PayloadError, TrackingUpdate
from shared.contracts import EventType, ProblemCode
from shared.signing import SignatureError
from tests.shared.adapters.carriers import (
    BY_NAME,
    NOW,
    SECRET,
    TOLERANCE_S,
    adapter_for,
    document,
    easypost_signature,
    encode,
    payload,
    set_path,
    shippo_signature,
)


def update_of(config: dict[str, object], body: bytes) -> TrackingUpdate:
    result = adapter_for(config).normalise(body)
    assert isinstance(result, TrackingUpdate)
    return result


def pointers(raised: pytest.ExceptionInfo[PayloadError]) -> list[str]:
    return [error.field for error in raised.value.errors]


# EasyPost


def test_easypost_keys_the_hmac_with_the_nfkd_normalised_secret() -> None:
    # U+FB01 (fi ligature) and full-width letters decompose under NFKD.
    secret = "\ufb01rst-\uff57\uff45\uff42\uff48\uff4f\uff4f\uff4b-secret"
    config = {"adapter": "easypost", "secrets": [secret]}
    body = payload("easypost_tracker_updated.json")
    raw_key_digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

    adapter_for(config).verify(body, easypost_signature(body, secret, NOW), now=NOW)
    with pytest.raises(SignatureError) as raised:
        adapter_for(config).verify(
            body, {"x-hmac-signature": f"hmac-sha256-hex={raw_key_digest}"}, now=NOW
        )
    assert raised.value.code is ProblemCode.SIGNATURE_INVALID


def test_easypost_signature_without_its_prefix_is_invalid() -> None:
    body = payload("easypost_tracker_updated.json")
    digest = easypost_signature(body, SECRET, NOW)["x-hmac-signature"].split("=", 1)[1]

    with pytest.raises(SignatureError) as raised:
        adapter_for(BY_NAME["easypost"].config).verify(body, {"x-hmac-signature": digest}, now=NOW)
    assert raised.value.code is ProblemCode.SIGNATURE_INVALID


def test_easypost_without_tracking_details_uses_the_trackers_updated_at() -> None:
    doc = set_path(document("easypost_tracker_updated.json"), ("result", "tracking_details"), [])

    update = update_of(BY_NAME["easypost"].config, encode(doc))

    assert update.occurred_at == datetime(2026, 11, 22, 10, 16, tzinfo=UTC)


def test_easypost_without_any_time_names_the_fallback_field() -> None:
    doc = document("easypost_tracker_updated.json")
    doc = set_path(doc, ("result", "tracking_details"), [{"datetime": None}])
    doc = set_path(doc, ("result", "updated_at"), "yesterday")

    with pytest.raises(PayloadError) as raised:
        adapter_for(BY_NAME["easypost"].config).normalise(encode(doc))
    assert pointers(raised) == ["/result/updated_at"]


# AfterShip


def test_aftership_passes_over_checkpoints_without_an_offset() -> None:
    doc = document("aftership_tracking_update.json")
    doc = set_path(doc, ("msg", "checkpoints", 1, "checkpoint_time"), "2026-11-23T04:12:00")

    update = update_of(BY_NAME["aftership"].config, encode(doc))

    assert update.occurred_at == datetime.fromisoformat("2026-11-20T02:58:00-05:00")


def test_aftership_with_no_usable_checkpoint_uses_the_trackings_updated_at() -> None:
    doc = set_path(document("aftership_tracking_update.json"), ("msg", "checkpoints"), [])

    update = update_of(BY_NAME["aftership"].config, encode(doc))

    assert update.occurred_at == datetime(2026, 11, 22, 9, 31, 48, tzinfo=UTC)


def test_aftership_empty_order_id_means_none() -> None:
    doc = set_path(document("aftership_tracking_update.json"), ("msg", "order_id"), "")

    assert update_of(BY_NAME["aftership"].config, encode(doc)).order_id is None


# Shopify


def test_shopify_prefers_a_tracking_number_over_the_fulfillment_id() -> None:
    doc = set_path(document("shopify_fulfillment_event.json"), ("tracking_number",), "1Z999")

    assert update_of(BY_NAME["shopify"].config, encode(doc)).tracking_number == "1Z999"


def test_shopify_without_tracking_number_or_fulfillment_id_names_the_fulfillment_id() -> None:
    doc = set_path(document("shopify_fulfillment_event.json"), ("fulfillment_id",), ...)

    with pytest.raises(PayloadError) as raised:
        adapter_for(BY_NAME["shopify"].config).normalise(encode(doc))
    assert pointers(raised) == ["/fulfillment_id"]


# UPS


@pytest.mark.parametrize(
    ("date", "time", "pointer"),
    [
        ("2026-11-22", "121500", "/gmtActivityDate"),
        ("20261122", "12:15", "/gmtActivityTime"),
        ("20261340", "121500", "/gmtActivityDate"),
        (20261122, "121500", "/gmtActivityDate"),
    ],
)
def test_ups_activity_time_must_be_a_gmt_date_and_time(
    date: object, time: object, pointer: str
) -> None:
    doc = set_path(document("ups_track_alert.json"), ("gmtActivityDate",), date)
    doc = set_path(doc, ("gmtActivityTime",), time)

    with pytest.raises(PayloadError) as raised:
        adapter_for(BY_NAME["ups"].config).normalise(encode(doc))
    assert pointers(raised) == [pointer]


def test_ups_ignores_the_local_activity_time() -> None:
    doc = set_path(document("ups_track_alert.json"), ("localActivityTime",), "235959")

    update = update_of(BY_NAME["ups"].config, encode(doc))

    assert update.occurred_at == datetime(2026, 11, 22, 12, 15, tzinfo=UTC)


def test_ups_credential_of_another_length_is_invalid() -> None:
    body = payload("ups_track_alert.json")
    for credential in (SECRET[:-1], SECRET + "x", "x"):
        with pytest.raises(SignatureError) as raised:
            adapter_for(BY_NAME["ups"].config).verify(body, {"credential": credential}, now=NOW)
        assert raised.value.code is ProblemCode.SIGNATURE_INVALID


# Shippo


@pytest.mark.parametrize("skew", [TOLERANCE_S + 1, -TOLERANCE_S - 1, 86_400])
def test_shippo_timestamp_outside_tolerance_is_refused(skew: int) -> None:
    body = payload("shippo_track_updated.json")
    headers = shippo_signature(body, SECRET, NOW + skew)

    with pytest.raises(SignatureError) as raised:
        adapter_for(BY_NAME["shippo"].config).verify(body, headers, now=NOW)
    assert raised.value.code is ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE


@pytest.mark.parametrize("skew", [TOLERANCE_S, -TOLERANCE_S, 0])
def test_shippo_timestamp_at_the_tolerance_edge_is_accepted(skew: int) -> None:
    body = payload("shippo_track_updated.json")

    adapter_for(BY_NAME["shippo"].config).verify(
        body, shippo_signature(body, SECRET, NOW + skew), now=NOW
    )


@pytest.mark.parametrize("value", ["v1=abcd", "t=soon,v1=abcd", "t=,v1=abcd", "t=1.5,v1=ab"])
def test_shippo_header_without_an_integer_timestamp_is_out_of_tolerance(value: str) -> None:
    with pytest.raises(SignatureError) as raised:
        adapter_for(BY_NAME["shippo"].config).verify(
            payload("shippo_track_updated.json"), {"shippo-auth-signature": value}, now=NOW
        )
    assert raised.value.code is ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE


def test_shippo_accepts_any_matching_v1_and_passes_over_malformed_ones() -> None:
    body = payload("shippo_track_updated.json")
    good = shippo_signature(body, SECRET, NOW)["shippo-auth-signature"].split(",v1=")[1]

    adapter_for(BY_NAME["shippo"].config).verify(
        body, {"shippo-auth-signature": f"t={NOW},v1=zz,v1={'0' * 64},v1={good}"}, now=NOW
    )


def test_shippo_signature_must_cover_the_timestamp() -> None:
    body = payload("shippo_track_updated.json")
    body_only = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()

    with pytest.raises(SignatureError) as raised:
        adapter_for(BY_NAME["shippo"].config).verify(
            body, {"shippo-auth-signature": f"t={NOW},v1={body_only}"}, now=NOW
        )
    assert raised.value.code is ProblemCode.SIGNATURE_INVALID


# generic


def generic(**changes: object) -> dict[str, object]:
    return {**BY_NAME["generic-fedex-style"].config, **changes}


def test_generic_hmac_strips_the_prefix_and_decodes_hex() -> None:
    config = generic(
        signature={
            "kind": "hmac-sha256",
            "header": "X-Carrier-Sig",
            "encoding": "hex",
            "prefix": "sha256=",
        }
    )
    body = payload("fedex_style.json")
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()

    adapter_for(config).verify(body, {"x-carrier-sig": f"sha256={digest}"}, now=NOW)
    with pytest.raises(SignatureError) as raised:
        adapter_for(config).verify(body, {"x-carrier-sig": digest}, now=NOW)
    assert raised.value.code is ProblemCode.SIGNATURE_INVALID


def test_generic_base64_signature_in_hex_is_invalid() -> None:
    body = payload("fedex_style.json")
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()

    with pytest.raises(SignatureError) as raised:
        adapter_for(generic()).verify(body, {"fdx-signature": digest}, now=NOW)
    assert raised.value.code is ProblemCode.SIGNATURE_INVALID


def test_generic_reads_unix_seconds_and_rfc3339_but_not_naive_times() -> None:
    doc = document("fedex_style.json")
    at_seconds = update_of(generic(), encode(set_path(doc, ("scan", "time"), 1795341600.5)))
    assert at_seconds.occurred_at == datetime(2026, 11, 22, 10, 0, 0, 500000, tzinfo=UTC)

    with pytest.raises(PayloadError) as raised:
        adapter_for(generic()).normalise(
            encode(set_path(doc, ("scan", "time"), "2026-11-22T08:45:00"))
        )
    assert pointers(raised) == ["/scan/time"]


def test_generic_without_event_id_pointer_derives_the_id() -> None:
    fields = dict(BY_NAME["generic-fedex-style"].config["fields"])
    del fields["event_id"]
    body = payload("fedex_style.json")

    update = update_of(generic(fields=fields), body)

    assert update.event_id_derived
    assert update.event_id == update_of(generic(fields=fields), body).event_id


def test_generic_pointers_follow_rfc6901_escapes() -> None:
    fields = {
        "tracking_number": "/a~1b",
        "status": "/m~0n/0",
        "occurred_at": "/t",
    }
    body = encode({"a/b": "TN1", "m~n": ["PU"], "t": "2026-11-22T08:45:00Z"})

    update = update_of(generic(fields=fields), body)

    assert (update.tracking_number, update.carrier_status) == ("TN1", "PU")


def test_generic_token_equal_to_no_secret_is_invalid() -> None:
    config = BY_NAME["generic-dhl-style"].config
    body = payload("dhl_style.json")

    with pytest.raises(SignatureError) as raised:
        adapter_for(config).verify(body, {"dhl-api-key": "not-the-key-0000000"}, now=NOW)
    assert raised.value.code is ProblemCode.SIGNATURE_INVALID


def test_base64_signature_with_stray_characters_is_invalid() -> None:
    body = payload("aftership_tracking_update.json")
    digest = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest())

    with pytest.raises(SignatureError) as raised:
        adapter_for(BY_NAME["aftership"].config).verify(
            body, {"aftership-hmac-sha256": digest.decode() + "!"}, now=NOW
        )
    assert raised.value.code is ProblemCode.SIGNATURE_INVALID


def test_ignored_is_decided_by_the_body_alone() -> None:
    body = encode({"event": "batch_created", "data": {}})

    result = adapter_for(BY_NAME["shippo"].config).normalise(body)

    assert result == Ignored("Shippo event 'batch_created' is not a tracking update")


# Vocabularies: at least the table of docs/contract.md §3.4, and a documented unmapped status.

SPEC_VOCABULARIES: dict[str, dict[str, EventType | None]] = {
    "easypost": {
        "pre_transit": EventType.CREATED,
        "in_transit": EventType.IN_TRANSIT,
        "out_for_delivery": EventType.OUT_FOR_DELIVERY,
        "delivered": EventType.DELIVERED,
        "return_to_sender": EventType.RETURNED,
        "failure": EventType.DELIVERY_FAILED,
        "cancelled": EventType.CANCELLED,
        "unknown": None,
    },
    "aftership": {
        "InfoReceived": EventType.CREATED,
        "InTransit": EventType.IN_TRANSIT,
        "OutForDelivery": EventType.OUT_FOR_DELIVERY,
        "AttemptFail": EventType.DELIVERY_FAILED,
        "Delivered": EventType.DELIVERED,
        "Expired": None,
    },
    "shopify": {
        "confirmed": EventType.CREATED,
        "label_purchased": EventType.CREATED,
        "label_printed": EventType.CREATED,
        "carrier_picked_up": EventType.PICKED_UP,
        "picked_up": EventType.PICKED_UP,
        "in_transit": EventType.IN_TRANSIT,
        "out_for_delivery": EventType.OUT_FOR_DELIVERY,
        "attempted_delivery": EventType.DELIVERY_FAILED,
        "delivered": EventType.DELIVERED,
        "IN_TRANSIT": None,
    },
    "ups": {
        "M": EventType.CREATED,
        "P": EventType.PICKED_UP,
        "I": EventType.IN_TRANSIT,
        "X": EventType.DELIVERY_FAILED,
        "D": EventType.DELIVERED,
        "NA": None,
    },
    "shippo": {
        "PRE_TRANSIT": EventType.CREATED,
        "TRANSIT": EventType.IN_TRANSIT,
        "DELIVERED": EventType.DELIVERED,
        "RETURNED": EventType.RETURNED,
        "FAILURE": EventType.DELIVERY_FAILED,
        "UNKNOWN": None,
    },
}


@pytest.mark.parametrize("name", sorted(SPEC_VOCABULARIES))
def test_built_in_vocabulary_covers_the_spec_table(name: str) -> None:
    carrier = BY_NAME[name]
    doc = document(carrier.example)
    for status, event_type in SPEC_VOCABULARIES[name].items():
        body = encode(set_path(doc, carrier.status_path, status))
        assert update_of(carrier.config, body).event_type is event_type, status


@pytest.mark.parametrize(
    "when", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2026-02-30T10:00:00Z"]
)
def test_a_time_outside_the_calendar_is_named_as_invalid(when: str) -> None:
    path = ("data", "tracking_status", "status_date")
    doc = set_path(document("shippo_track_updated.json"), path, when)

    with pytest.raises(PayloadError) as raised:
        adapter_for(BY_NAME["shippo"].config).normalise(encode(doc))
    assert pointers(raised) == ["/data/tracking_status/status_date"]


@pytest.mark.parametrize("seconds", [1e300, -1e20, float(2**63)])
def test_unix_seconds_outside_the_calendar_are_named_as_invalid(seconds: float) -> None:
    doc = set_path(document("dhl_style.json"), ("events", 0, "timestamp"), seconds)

    with pytest.raises(PayloadError) as raised:
        adapter_for(BY_NAME["generic-dhl-style"].config).normalise(encode(doc))
    assert pointers(raised) == ["/events/0/timestamp"]
