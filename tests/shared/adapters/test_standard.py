"""Adapters ``standard`` and ``hex``: the canonical path, unchanged behind the adapter interface."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from shared.adapters.base import Canonical, PayloadError
from shared.adapters.standard import StandardAdapter
from shared.contracts import FieldError, ProblemCode, decode_event
from shared.signing import SignatureError
from tests.shared.adapters.carriers import NOW, SECRET, adapter_for

WHSEC = "whsec_" + base64.b64encode(b"standard-key-0123456789").decode()
STANDARD = {"secrets": [WHSEC]}
HEX = {"scheme": "hex", "secrets": [SECRET]}
BODY = (
    b'{"event_id":"evt_1","event_type":"shipment.delivered",'
    b'"occurred_at":"2026-11-22T10:15:00Z",'
    b'"shipment":{"id":"shp_1","order_id":"ord_1","tracking_number":"1Z"},'
    b'"location":{"lat":52.5,"lon":13.4},"data":{"note":"left at door"}}'
)


def reference_headers(body: bytes, msg_id: str = "msg_1", timestamp: int = NOW) -> dict[str, str]:
    signature = Webhook(WHSEC).sign(
        msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode()
    )
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_standard_accepts_what_the_reference_implementation_signs() -> None:
    adapter = adapter_for(STANDARD)
    headers = reference_headers(BODY)

    adapter.verify(BODY, {name: headers[name] for name in adapter.header_names}, now=NOW)


def test_standard_keeps_the_canonical_failure_codes() -> None:
    adapter = adapter_for(STANDARD)
    cases = {
        ProblemCode.SIGNATURE_MISSING: {"webhook-id": "msg_1"},
        ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE: reference_headers(BODY, timestamp=NOW - 301),
        ProblemCode.SIGNATURE_INVALID: reference_headers(BODY + b" "),
    }
    for code, headers in cases.items():
        with pytest.raises(SignatureError) as raised:
            adapter.verify(BODY, headers, now=NOW)
        assert raised.value.code is code


def test_standard_signing_helper_signs_as_the_reference_implementation() -> None:
    headers = adapter_for(STANDARD).sign(BODY, now=NOW)

    assert headers == reference_headers(BODY, msg_id=headers["webhook-id"])
    assert headers == adapter_for(STANDARD).sign(BODY, now=NOW)
    adapter = adapter_for(STANDARD)
    assert isinstance(adapter, StandardAdapter)
    assert adapter.sign(BODY, now=NOW, msg_id="msg_9")["webhook-id"] == "msg_9"


def test_standard_normalises_to_the_canonical_event_itself() -> None:
    result = adapter_for(STANDARD).normalise(BODY)

    assert result == Canonical(decode_event(BODY))


def test_standard_names_the_first_invalid_field_in_dotted_form() -> None:
    body = BODY.replace(b'"id":"shp_1",', b"")

    with pytest.raises(PayloadError) as raised:
        adapter_for(STANDARD).normalise(body)

    assert raised.value.code is ProblemCode.VALIDATION_FAILED
    assert raised.value.errors == (
        FieldError(field="shipment.id", message="Object missing required field `id`"),
    )


def test_standard_malformed_json_outranks_a_schema_error() -> None:
    body = b'{"event_id": 5, "rest": [1, 2'

    with pytest.raises(PayloadError) as raised:
        adapter_for(STANDARD).normalise(body)
    assert raised.value.code is ProblemCode.MALFORMED_JSON


@pytest.mark.parametrize("body", [b"", b"nope", BODY.replace(b"left", b"l\xffft")])
def test_standard_body_that_is_not_json_or_not_utf8_is_malformed(body: bytes) -> None:
    with pytest.raises(PayloadError) as raised:
        adapter_for(STANDARD).normalise(body)
    assert raised.value.code is ProblemCode.MALFORMED_JSON


def test_hex_accepts_the_documented_hmac_and_nothing_else() -> None:
    digest = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    adapter = adapter_for(HEX)

    adapter.verify(BODY, {"x-signature": f"sha256={digest}"}, now=NOW)
    assert adapter.header_names == ("x-signature",)
    assert adapter.sign(BODY, now=NOW) == {"x-signature": f"sha256={digest}"}
    with pytest.raises(SignatureError) as raised:
        adapter.verify(BODY, reference_headers(BODY), now=NOW)
    assert raised.value.code is ProblemCode.SIGNATURE_MISSING
    assert adapter.normalise(BODY) == Canonical(decode_event(BODY))
