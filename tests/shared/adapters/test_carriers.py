"""Every built-in carrier (and both generic examples) against its documented example.

Signatures are computed the way each carrier documents it (``carriers.py``),
independently of the adapters' own signing code.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shared.adapters.base import Ignored, PayloadError, TrackingUpdate
from shared.contracts import EventType, ProblemCode
from shared.signing import SignatureError
from tests.shared.adapters.carriers import (
    CARRIERS,
    NOW,
    OTHER_SECRET,
    SECRET,
    Carrier,
    adapter_for,
    document,
    encode,
    payload,
    set_path,
)

carriers = pytest.mark.parametrize("carrier", CARRIERS, ids=lambda c: c.name)
ignoring = pytest.mark.parametrize(
    "carrier", [c for c in CARRIERS if c.ignored is not None], ids=lambda c: c.name
)
deriving = pytest.mark.parametrize(
    "carrier", [c for c in CARRIERS if c.event_id is None], ids=lambda c: c.name
)


def tracking(
    carrier: Carrier, body: bytes, config: dict[str, object] | None = None
) -> TrackingUpdate:
    adapter = adapter_for(config or carrier.config)
    adapter.verify(body, carrier.sign(body, SECRET, NOW), now=NOW)
    result = adapter.normalise(body)
    assert isinstance(result, TrackingUpdate)
    return result


@carriers
def test_documented_example_verifies_and_normalises_to_the_mapped_status(carrier: Carrier) -> None:
    update = tracking(carrier, payload(carrier.example))

    assert update.tracking_number == carrier.tracking_number
    assert update.shipment_id == carrier.tracking_number
    assert update.carrier_status == carrier.carrier_status
    assert update.event_type is carrier.event_type
    assert update.occurred_at == carrier.occurred_at
    assert update.occurred_at.tzinfo is not None
    assert update.order_id == carrier.order_id
    if carrier.event_id is None:
        assert update.event_id_derived
        assert update.event_id.startswith("drv_")
    else:
        assert not update.event_id_derived
        assert update.event_id == carrier.event_id


@carriers
def test_a_tampered_byte_is_signature_invalid(carrier: Carrier) -> None:
    body = payload(carrier.example)
    headers = carrier.sign(body, SECRET, NOW)
    position = body.index(carrier.tracking_number.encode())
    tampered = body[:position] + bytes([body[position] ^ 1]) + body[position + 1 :]
    assert tampered != body
    adapter = adapter_for(carrier.config)

    if carrier.name in ("ups", "generic-dhl-style"):
        # A static credential signs nothing: a tampered body still carries it.
        adapter.verify(tampered, headers, now=NOW)
        return
    with pytest.raises(SignatureError) as raised:
        adapter.verify(tampered, headers, now=NOW)
    assert raised.value.code is ProblemCode.SIGNATURE_INVALID


def _tampered(headers: dict[str, str], name: str) -> None:
    value = headers[name]
    headers[name] = value[:-1] + ("0" if value[-1] != "0" else "1")


def _absent(headers: dict[str, str], name: str) -> None:
    del headers[name]


def _empty(headers: dict[str, str], name: str) -> None:
    headers[name] = ""


HEADER_CHANGES = [
    ("tampered signature or credential", _tampered, ProblemCode.SIGNATURE_INVALID),
    ("absent signature header", _absent, ProblemCode.SIGNATURE_MISSING),
    ("empty signature header", _empty, ProblemCode.SIGNATURE_MISSING),
]


@carriers
@pytest.mark.parametrize(
    ("change", "code"), [case[1:] for case in HEADER_CHANGES], ids=[c[0] for c in HEADER_CHANGES]
)
def test_a_changed_signature_header_is_refused_with_its_code(
    carrier: Carrier, change: Callable[[dict[str, str], str], None], code: ProblemCode
) -> None:
    body = payload(carrier.example)
    headers = carrier.sign(body, SECRET, NOW)
    change(headers, carrier.header)

    with pytest.raises(SignatureError) as raised:
        adapter_for(carrier.config).verify(body, headers, now=NOW)
    assert raised.value.code is code


@carriers
def test_any_active_secret_verifies_during_rotation(carrier: Carrier) -> None:
    body = payload(carrier.example)
    rotated = {**carrier.config, "secrets": [OTHER_SECRET, SECRET]}

    adapter_for(rotated).verify(body, carrier.sign(body, SECRET, NOW), now=NOW)
    adapter_for(rotated).verify(body, carrier.sign(body, OTHER_SECRET, NOW), now=NOW)
    with pytest.raises(SignatureError) as raised:
        adapter_for(carrier.config).verify(body, carrier.sign(body, OTHER_SECRET, NOW), now=NOW)
    assert raised.value.code is ProblemCode.SIGNATURE_INVALID


@carriers
def test_the_signing_helper_sends_what_the_carrier_sends(carrier: Carrier) -> None:
    body = payload(carrier.example)
    expected = carrier.sign(body, SECRET, NOW)

    ours = adapter_for(carrier.config).sign(body, now=NOW)

    assert ours == {carrier.header: expected[carrier.header]}


@carriers
def test_an_unknown_status_is_unmapped_until_the_source_maps_it(carrier: Carrier) -> None:
    body = encode(set_path(document(carrier.example), carrier.status_path, "held_at_customs"))

    unmapped = tracking(carrier, body)
    assert unmapped.carrier_status == "held_at_customs"
    assert unmapped.event_type is None

    extended = {
        **carrier.config,
        "statuses": {**carrier.config.get("statuses", {}), "held_at_customs": "in_transit"},
    }
    mapped = tracking(carrier, body, extended)
    assert mapped.event_type is EventType.IN_TRANSIT
    assert mapped.event_id == unmapped.event_id


@carriers
def test_a_source_override_replaces_a_built_in_mapping(carrier: Carrier) -> None:
    overridden = {
        **carrier.config,
        "statuses": {
            **carrier.config.get("statuses", {}),
            carrier.carrier_status: "shipment.delivery_failed",
        },
    }

    update = tracking(carrier, payload(carrier.example), overridden)

    assert update.event_type is EventType.DELIVERY_FAILED


@carriers
def test_missing_identity_fields_are_all_named_by_json_pointer(carrier: Carrier) -> None:
    doc = document(carrier.example)
    for path in carrier.required:
        doc = set_path(doc, path, ...)

    with pytest.raises(PayloadError) as raised:
        adapter_for(carrier.config).normalise(encode(doc))

    assert raised.value.code is ProblemCode.VALIDATION_FAILED
    named = sorted(error.field for error in raised.value.errors)
    assert named == sorted(carrier.required.values())


@carriers
def test_each_missing_field_alone_is_named(carrier: Carrier) -> None:
    for path, pointer in carrier.required.items():
        body = encode(set_path(document(carrier.example), path, ...))
        with pytest.raises(PayloadError) as raised:
            adapter_for(carrier.config).normalise(body)
        assert [error.field for error in raised.value.errors] == [pointer]


@carriers
def test_a_body_that_is_not_json_is_malformed(carrier: Carrier) -> None:
    for body in (b"{not json", b'{"a": "\xff"}', b"[" * 5000):
        with pytest.raises(PayloadError) as raised:
            adapter_for(carrier.config).normalise(body)
        assert raised.value.code is ProblemCode.MALFORMED_JSON


@carriers
def test_json_that_is_not_an_object_fails_validation_at_the_root(carrier: Carrier) -> None:
    with pytest.raises(PayloadError) as raised:
        adapter_for(carrier.config).normalise(b"[1, 2]")
    assert raised.value.code is ProblemCode.VALIDATION_FAILED
    assert [error.field for error in raised.value.errors] == [""]


@ignoring
def test_a_verified_notification_that_is_not_a_tracking_update_is_ignored(
    carrier: Carrier,
) -> None:
    assert carrier.ignored is not None
    body = encode(carrier.ignored)
    adapter = adapter_for(carrier.config)
    adapter.verify(body, carrier.sign(body, SECRET, NOW), now=NOW)

    result = adapter.normalise(body)

    assert isinstance(result, Ignored)
    assert result.reason


@deriving
def test_derived_ids_are_stable_across_resends_and_new_for_a_new_status(
    carrier: Carrier,
) -> None:
    body = payload(carrier.example)
    first = tracking(carrier, body)
    resend = tracking(carrier, encode(document(carrier.example)))
    new_status = tracking(
        carrier, encode(set_path(document(carrier.example), carrier.status_path, "delivered"))
    )

    assert resend.event_id == first.event_id
    assert new_status.event_id != first.event_id


def test_only_the_adapters_without_a_carrier_id_derive_one() -> None:
    assert {c.name for c in CARRIERS if c.event_id is None} == {
        "ups",
        "shippo",
        "generic-dhl-style",
    }


@carriers
def test_the_adapter_names_the_headers_it_reads(carrier: Carrier) -> None:
    body = payload(carrier.example)
    adapter = adapter_for(carrier.config)
    sent = carrier.sign(body, SECRET, NOW)

    assert carrier.header in adapter.header_names
    adapter.verify(body, {name: sent[name] for name in adapter.header_names}, now=NOW)
