"""Signing and verification against the Standard Webhooks reference implementation.

The reference is the third-party ``standardwebhooks`` package: our ``sign()``
must produce the very bytes it produces, and it must accept what we sign.
Verification is pure (the clock is an argument), so tolerance edges are exact.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from shared.contracts import ProblemCode
from shared.settings import decode_secret
from shared.signing import (
    SignatureError,
    generate_secret,
    sign,
    sign_hex,
    signed_headers,
    verify_hex,
    verify_standard,
)

NOW = 1_795_000_000
TOLERANCE_S = 300
SECRET = generate_secret()
OTHER_SECRET = generate_secret()
KEY = decode_secret(SECRET)
BODY = b'{"event_id":"evt_1","event_type":"shipment.created"}'

secrets = st.binary(min_size=16, max_size=64).map(
    lambda key: "whsec_" + base64.b64encode(key).decode()
)
message_ids = st.text(min_size=1, max_size=60)
timestamps = st.integers(min_value=0, max_value=2**33)
bodies = st.text(max_size=500)


def reference_sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    signature: str = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body)
    return signature


def headers_for(signature: str, *, msg_id: str = "msg_1", timestamp: int = NOW) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def verify(headers: dict[str, str], body: bytes = BODY, *, now: float = NOW) -> None:
    verify_standard([KEY], headers, body, now=now, tolerance_s=TOLERANCE_S)


def expect_code(code: ProblemCode, headers: dict[str, str], body: bytes = BODY) -> None:
    with pytest.raises(SignatureError) as raised:
        verify(headers, body)
    assert raised.value.code is code
    assert raised.value.detail


# ---------------------------------------------------------------- agreement with the reference


@settings(max_examples=200, deadline=None)
@given(secret=secrets, msg_id=message_ids, timestamp=timestamps, body=bodies)
def test_sign_agrees_with_the_reference_byte_for_byte(
    secret: str, msg_id: str, timestamp: int, body: str
) -> None:
    ours = sign(decode_secret(secret), msg_id, timestamp, body.encode())
    assert ours == reference_sign(secret, msg_id, timestamp, body)


@settings(max_examples=100, deadline=None)
@given(secret=secrets, msg_id=message_ids, body=bodies)
def test_reference_verifier_accepts_our_signed_headers(secret: str, msg_id: str, body: str) -> None:
    now = datetime.now(tz=UTC).timestamp()
    headers = signed_headers(secret, msg_id, body.encode(), now)
    Webhook(secret).verify(body.encode(), headers, json_parse=False)


@settings(max_examples=100, deadline=None)
@given(secret=secrets, msg_id=message_ids, body=bodies)
def test_we_accept_what_the_reference_signs(secret: str, msg_id: str, body: str) -> None:
    signature = reference_sign(secret, msg_id, NOW, body)
    verify_standard(
        [decode_secret(secret)],
        headers_for(signature, msg_id=msg_id),
        body.encode(),
        now=NOW,
        tolerance_s=TOLERANCE_S,
    )


def test_signed_headers_carry_integer_seconds() -> None:
    headers = signed_headers(SECRET, "msg_1", BODY, NOW + 0.9)
    assert headers["webhook-timestamp"] == str(NOW)
    assert headers["webhook-signature"] == sign(KEY, "msg_1", NOW, BODY)


# ---------------------------------------------------------------- rotation


def test_any_active_secret_accepts() -> None:
    signature = sign(decode_secret(OTHER_SECRET), "msg_1", NOW, BODY)
    verify_standard(
        [KEY, decode_secret(OTHER_SECRET)],
        headers_for(signature),
        BODY,
        now=NOW,
        tolerance_s=TOLERANCE_S,
    )


def test_two_signatures_in_one_header_pass_if_either_matches() -> None:
    good = sign(KEY, "msg_1", NOW, BODY)
    stale = sign(decode_secret(OTHER_SECRET), "msg_1", NOW, BODY)
    verify(headers_for(f"{stale} {good}"))
    verify(headers_for(f"{good} {stale}"))


def test_malformed_entries_next_to_a_good_signature_are_ignored() -> None:
    good = sign(KEY, "msg_1", NOW, BODY)
    verify(headers_for(f"v1,@@@ v2,{good[3:]} junk {good}"))


# ---------------------------------------------------------------- each failure code


@pytest.mark.parametrize("absent", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_absent_or_empty_header_is_signature_missing(absent: str) -> None:
    headers = headers_for(sign(KEY, "msg_1", NOW, BODY))
    del headers[absent]
    expect_code(ProblemCode.SIGNATURE_MISSING, headers)
    expect_code(ProblemCode.SIGNATURE_MISSING, {**headers, absent: ""})


@pytest.mark.parametrize("skew_s", [-TOLERANCE_S, 0, TOLERANCE_S])
def test_timestamp_exactly_at_the_tolerance_is_accepted(skew_s: int) -> None:
    timestamp = NOW + skew_s
    verify(headers_for(sign(KEY, "msg_1", timestamp, BODY), timestamp=timestamp))


@pytest.mark.parametrize("skew_s", [-TOLERANCE_S - 1, TOLERANCE_S + 1, -(10**9), 10**9])
def test_timestamp_beyond_the_tolerance_is_out_of_tolerance(skew_s: int) -> None:
    timestamp = NOW + skew_s
    expect_code(
        ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE,
        headers_for(sign(KEY, "msg_1", timestamp, BODY), timestamp=timestamp),
    )


@pytest.mark.parametrize(
    "raw",
    [
        "1.795e9",
        "soon",
        "0x6b0",
        "١٧٩٥٠٠٠٠٠٠",
        "--1",
        "-",
        "+1795000000",
        "1795000000s",
        "9" * 5000,
    ],
)
def test_timestamp_that_is_not_integer_seconds_is_out_of_tolerance(raw: str) -> None:
    headers = headers_for(sign(KEY, "msg_1", NOW, BODY))
    headers["webhook-timestamp"] = raw
    expect_code(ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE, headers)


def test_timestamp_is_checked_before_the_signature() -> None:
    """An old replayed request learns only that it is too old."""
    expect_code(
        ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE,
        headers_for("v1,garbage", timestamp=NOW - 10 * TOLERANCE_S),
    )


@pytest.mark.parametrize(
    "signature",
    ["v1,not-base64!", "v1", "v1,", "v2,AAAA", "  ", "v1,AAAA", "v1,\u00e9", "v1,AAAA\u00ff"],
)
def test_signature_list_without_a_matching_v1_entry_is_invalid(signature: str) -> None:
    expect_code(ProblemCode.SIGNATURE_INVALID, headers_for(signature))


def test_signature_of_another_body_is_invalid() -> None:
    expect_code(
        ProblemCode.SIGNATURE_INVALID,
        headers_for(sign(KEY, "msg_1", NOW, BODY)),
        body=BODY + b" ",
    )


def test_signature_of_another_message_id_or_timestamp_is_invalid() -> None:
    signature = sign(KEY, "msg_1", NOW, BODY)
    expect_code(ProblemCode.SIGNATURE_INVALID, headers_for(signature, msg_id="msg_2"))
    expect_code(ProblemCode.SIGNATURE_INVALID, headers_for(signature, timestamp=NOW - 1))


def test_signature_under_an_unknown_secret_is_invalid() -> None:
    expect_code(
        ProblemCode.SIGNATURE_INVALID,
        headers_for(sign(decode_secret(OTHER_SECRET), "msg_1", NOW, BODY)),
    )


# ---------------------------------------------------------------- legacy hex scheme

HEX_KEY = b"legacy-secret-at-least-16"


def test_sign_hex_is_hmac_sha256_of_the_raw_body_in_hex() -> None:
    expected = hmac.new(HEX_KEY, BODY, hashlib.sha256).hexdigest()
    assert sign_hex(HEX_KEY, BODY) == f"sha256={expected}"


def test_hex_signature_is_accepted_under_any_key() -> None:
    verify_hex([b"another-legacy-secret!", HEX_KEY], {"x-signature": sign_hex(HEX_KEY, BODY)}, BODY)


def test_hex_signature_in_upper_case_hex_is_accepted() -> None:
    digest = hmac.new(HEX_KEY, BODY, hashlib.sha256).hexdigest().upper()
    verify_hex([HEX_KEY], {"x-signature": f"sha256={digest}"}, BODY)


def test_absent_hex_signature_is_missing() -> None:
    with pytest.raises(SignatureError) as raised:
        verify_hex([HEX_KEY], {}, BODY)
    assert raised.value.code is ProblemCode.SIGNATURE_MISSING


@pytest.mark.parametrize(
    "value",
    ["sha256=zz", "sha1=" + "0" * 40, "sha256=", "SHA256=" + "0" * 64, "sha256=" + "0" * 64],
)
def test_wrong_or_malformed_hex_signature_is_invalid(value: str) -> None:
    with pytest.raises(SignatureError) as raised:
        verify_hex([HEX_KEY], {"x-signature": value}, BODY)
    assert raised.value.code is ProblemCode.SIGNATURE_INVALID


def test_hex_signature_of_another_body_is_invalid() -> None:
    with pytest.raises(SignatureError) as raised:
        verify_hex([HEX_KEY], {"x-signature": sign_hex(HEX_KEY, BODY)}, BODY + b"x")
    assert raised.value.code is ProblemCode.SIGNATURE_INVALID


# ---------------------------------------------------------------- secrets


def test_generated_secrets_are_distinct_and_decode_to_32_bytes() -> None:
    generated = {generate_secret() for _ in range(20)}
    assert len(generated) == 20
    assert all(len(decode_secret(secret)) == 32 for secret in generated)


def test_reference_library_reads_our_generated_secret() -> None:
    secret = generate_secret()
    assert reference_sign(secret, "m", NOW, "b") == sign(decode_secret(secret), "m", NOW, b"b")
