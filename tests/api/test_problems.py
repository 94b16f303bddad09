"""Every error row of the docs/contract.md §3.1 table, the check order, the problem format."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from litestar import Litestar, get

from tests.api.expect import assert_problem
from tests.factories import (
    JSON,
    TEST_SECRETS,
    event_body,
    event_payload,
    hex_headers,
    our_headers,
    reference_headers,
)

ClientFor = Callable[..., Awaitable[httpx.AsyncClient]]


def signed(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, reference_headers(body)


# ---------------------------------------------------------------- 400 malformed_json


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"event_id": "evt_1",}',
        b"not json",
        b'{"event_id": "evt_1"} trailing',
        b'{"event_id": "\\ud800"}',
    ],
    ids=["empty", "truncated", "trailing-comma", "bare-word", "trailing-data", "lone-surrogate"],
)
async def test_body_that_is_not_json_is_400_malformed_json(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post("/v1/events/acme", content=body, headers=our_headers(body))
    assert_problem(response, 400, "malformed_json")


@pytest.mark.parametrize(
    "body",
    [
        event_body(event_id="evt_PLACEHOLDER").replace(b"PLACEHOLDER", b"\xff\xfe"),
        event_body()[:-1] + b',"ignored":"\xfe\xff"}',
    ],
    ids=["in-a-field", "in-an-ignored-field"],
)
async def test_body_that_is_not_utf8_is_400_malformed_json(
    client: httpx.AsyncClient, body: bytes
) -> None:
    with pytest.raises(UnicodeDecodeError):
        body.decode()
    response = await client.post("/v1/events/acme", content=body, headers=our_headers(body))
    assert_problem(response, 400, "malformed_json")


async def test_schema_error_before_malformed_json_still_answers_400(
    client: httpx.AsyncClient,
) -> None:
    # msgspec stops at the first schema error (event_id is a number); the JSON breaks later.
    body = b'{"event_id": 1, "event_type": "shipment.created", "shipment": [}'
    response = await client.post("/v1/events/acme", content=body, headers=our_headers(body))
    assert_problem(response, 400, "malformed_json")


# ---------------------------------------------------------------- 401


Headers = Callable[[bytes], dict[str, str]]
STRANGER_SECRET = "whsec_" + "c3RyYW5nZXItc2VjcmV0LWtleS0zMmJ5dGVzLi4uLi4="


def _reference_without(name: str) -> Headers:
    return lambda body: {k: v for k, v in reference_headers(body).items() if k != name}


def _reference_with(name: str, value: str) -> Headers:
    return lambda body: {**reference_headers(body), name: value}


def _unsigned_with(name: str, value: str) -> Headers:
    return lambda _: {**JSON, name: value}


def _case(case_id: str, source: str, headers: Headers, code: str) -> Any:
    return pytest.param(source, headers, code, id=case_id)


MISSING, INVALID = "signature_missing", "signature_invalid"
MALFORMED_ENTRIES = ("v1,not-base64!", "v1", "v1,", "v2,AAAA", "garbage", "v1,AAAA v1,BBBB")
REFUSED_SIGNATURES = [
    *(
        _case(f"no-{name}", "acme", _reference_without(name), MISSING)
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    ),
    _case("unsigned", "acme", lambda _: JSON, MISSING),
    _case("hex-without-x-signature", "legacy", lambda _: JSON, MISSING),
    _case("unknown-secret", "acme", lambda body: reference_headers(body, STRANGER_SECRET), INVALID),
    *(
        _case(f"entry-{entry}", "acme", _reference_with("webhook-signature", entry), INVALID)
        for entry in MALFORMED_ENTRIES
    ),
    _case("wrong-hex-secret", "legacy", lambda body: hex_headers(body, "other-secret"), INVALID),
    *(
        _case(f"x-signature-{value}", "legacy", _unsigned_with("X-Signature", value), INVALID)
        for value in ("sha256=zz", "md5=abcd", "sha256=")
    ),
]


@pytest.mark.parametrize(("source", "headers", "code"), REFUSED_SIGNATURES)
async def test_a_signature_absent_or_not_verifying_is_401_with_its_code(
    client: httpx.AsyncClient, source: str, headers: Headers, code: str
) -> None:
    body = event_body()
    response = await client.post(f"/v1/events/{source}", content=body, headers=headers(body))
    assert_problem(response, 401, code)


@pytest.mark.parametrize("timestamp", ["soon", "1.7e9", "0x10", "12 34", "١٢٣", "--1", "9" * 5000])
async def test_timestamp_that_is_not_an_integer_is_401_out_of_tolerance(
    client: httpx.AsyncClient, timestamp: str
) -> None:
    body = event_body()
    headers = reference_headers(body)
    headers["webhook-timestamp"] = timestamp
    response = await client.post(
        "/v1/events/acme",
        content=body,
        headers=[(k.encode(), v.encode()) for k, v in headers.items()],
    )
    assert_problem(response, 401, "timestamp_out_of_tolerance")


async def post_signed_at(client: httpx.AsyncClient, skew_s: int) -> httpx.Response:
    """POST a valid event, correctly signed with a timestamp ``skew_s`` seconds from now."""
    body = event_body()
    headers = reference_headers(body, timestamp=int(time.time()) + skew_s)
    return await client.post("/v1/events/acme", content=body, headers=headers)


@pytest.mark.parametrize("skew_s", [-3600, -301 - 5, 301 + 5, 86_400])
async def test_timestamp_outside_tolerance_is_401_even_when_correctly_signed(
    client: httpx.AsyncClient, skew_s: int
) -> None:
    assert_problem(await post_signed_at(client, skew_s), 401, "timestamp_out_of_tolerance")


@pytest.mark.parametrize("skew_s", [-290, 290])
async def test_timestamp_inside_tolerance_is_accepted(
    client: httpx.AsyncClient, skew_s: int
) -> None:
    assert (await post_signed_at(client, skew_s)).status_code == 202


async def test_tolerance_comes_from_settings(client_for: ClientFor) -> None:
    client = await client_for(signature_tolerance_s=30)
    assert_problem(await post_signed_at(client, -120), 401, "timestamp_out_of_tolerance")


async def test_body_changed_after_signing_is_401_signature_invalid(
    client: httpx.AsyncClient,
) -> None:
    body = event_body()
    headers = reference_headers(body)
    tampered = body.replace(b"shp_123", b"shp_999")
    response = await client.post("/v1/events/acme", content=tampered, headers=headers)
    assert_problem(response, 401, "signature_invalid")


async def test_reformatted_body_is_401_signature_invalid(client: httpx.AsyncClient) -> None:
    """The body is verified exactly as received: same JSON, other bytes, other signature."""
    payload = event_payload()
    headers = reference_headers(json.dumps(payload, separators=(",", ":")).encode())
    response = await client.post(
        "/v1/events/acme", content=json.dumps(payload, indent=2).encode(), headers=headers
    )
    assert_problem(response, 401, "signature_invalid")


@pytest.mark.parametrize("source", ["nope", "ACME", "acme.", "-acme", "a" * 65, "ac%20me"])
async def test_source_not_configured_is_401_unknown_source(
    client: httpx.AsyncClient, source: str
) -> None:
    body = event_body()
    response = await client.post(
        f"/v1/events/{source}", content=body, headers=reference_headers(body)
    )
    assert_problem(response, 401, "unknown_source")


async def test_unknown_source_answer_reveals_nothing_beyond_the_code(
    client: httpx.AsyncClient,
) -> None:
    body = event_body()
    unsigned = await client.post("/v1/events/nope", content=body, headers=JSON)
    signed_ = await client.post("/v1/events/ACME", content=body, headers=reference_headers(body))
    first, second = unsigned.json(), signed_.json()
    del first["request_id"], second["request_id"]
    assert first == second
    assert "nope" not in unsigned.text


# ---------------------------------------------------------------- 413 (see also test_body_limit.py)


async def test_body_over_the_limit_is_413_payload_too_large(client_for: ClientFor) -> None:
    client = await client_for(max_body_bytes=1024)
    body = event_body(data={"pad": "x" * 1024})
    response = await client.post("/v1/events/acme", content=body, headers=reference_headers(body))
    problem = assert_problem(response, 413, "payload_too_large")
    assert "1024" in problem["detail"]


# ---------------------------------------------------------------- 415


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "json"],
)
async def test_content_type_absent_or_not_json_is_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    body = event_body()
    headers = reference_headers(body)
    del headers["content-type"]
    if content_type is not None:
        headers["content-type"] = content_type
    response = await client.post("/v1/events/acme", content=body, headers=headers)
    assert_problem(response, 415, "unsupported_media_type")


# ---------------------------------------------------------------- 422


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"shipment": {"order_id": "ord_9"}}, "shipment.id"),
        ({"shipment": {"id": "", "order_id": "ord_9"}}, "shipment.id"),
        ({"shipment": {"id": "s" * 129, "order_id": "ord_9"}}, "shipment.id"),
        ({"shipment": {"id": "shp_1", "order_id": 9}}, "shipment.order_id"),
        ({"event_type": "shipment.teleported"}, "event_type"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "e" * 129}, "event_id"),
        ({"event_id": "evt\n1"}, "event_id"),
        ({"event_id": "evt\u00851"}, "event_id"),
        ({"occurred_at": "2026-11-22T10:15:00"}, "occurred_at"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"location": {"lat": 90.5, "lon": 0}}, "location.lat"),
        ({"location": {"lat": 0, "lon": -180.01}}, "location.lon"),
        ({"location": {"lat": 0}}, "location.lon"),
        ({"data": ["not", "an", "object"]}, "data"),
    ],
)
async def test_invalid_event_is_422_naming_the_field(
    client: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    body, headers = signed(event_payload(**change))
    response = await client.post("/v1/events/acme", content=body, headers=headers)
    problem = assert_problem(response, 422, "validation_failed")
    assert problem["errors"][0]["field"] == field
    assert problem["errors"][0]["message"]


async def test_missing_top_level_field_is_named(client: httpx.AsyncClient) -> None:
    payload = event_payload()
    del payload["event_type"]
    body, headers = signed(payload)
    response = await client.post("/v1/events/acme", content=body, headers=headers)
    problem = assert_problem(response, 422, "validation_failed")
    assert problem["errors"] == [
        {"field": "event_type", "message": "Object missing required field `event_type`"}
    ]


async def test_422_names_every_invalid_field_not_only_the_first(
    client: httpx.AsyncClient,
) -> None:
    payload = event_payload(
        event_type="shipment.teleported",
        shipment={"id": "", "order_id": 9},
        location={"lat": 91, "lon": 0},
        data=[],
    )
    del payload["occurred_at"]
    body, headers = signed(payload)
    response = await client.post("/v1/events/acme", content=body, headers=headers)
    problem = assert_problem(response, 422, "validation_failed")
    fields = [error["field"] for error in problem["errors"]]
    # msgspec's own first error comes first; every other invalid field follows.
    assert fields[0] == "event_type"
    assert sorted(fields) == sorted(
        [
            "event_type",
            "occurred_at",
            "shipment.id",
            "shipment.order_id",
            "location.lat",
            "data",
        ]
    )
    assert all(error["message"] for error in problem["errors"])


async def test_422_with_two_invalid_fields_names_both(client: httpx.AsyncClient) -> None:
    body, headers = signed(event_payload(event_id="", shipment={"id": "shp_1", "order_id": ""}))
    response = await client.post("/v1/events/acme", content=body, headers=headers)
    problem = assert_problem(response, 422, "validation_failed")
    assert problem["errors"] == [
        {"field": "event_id", "message": "Expected `str` of length >= 1"},
        {"field": "shipment.order_id", "message": "Expected `str` of length >= 1"},
    ]


async def test_a_body_nested_too_deeply_to_decode_is_422_not_500(
    client: httpx.AsyncClient,
) -> None:
    depth = 50_000
    body, headers = signed(event_payload(data={"deep": "__DEEP__"}))
    body = body.replace(b'"__DEEP__"', b"[" * depth + b"]" * depth)
    headers = our_headers(body)
    response = await client.post("/v1/events/acme", content=body, headers=headers)
    problem = assert_problem(response, 422, "validation_failed")
    assert problem["errors"][0]["field"] == ""
    assert "too deeply" in problem["errors"][0]["message"]


@pytest.mark.parametrize("body", [b"[]", b"null", b"42", b'"event"'])
async def test_json_that_is_not_an_object_is_422_about_the_whole_body(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post("/v1/events/acme", content=body, headers=our_headers(body))
    problem = assert_problem(response, 422, "validation_failed")
    assert problem["errors"][0]["field"] == ""


# ---------------------------------------------------------------- order of the checks


async def test_oversized_body_with_wrong_content_type_is_413(client_for: ClientFor) -> None:
    client = await client_for(max_body_bytes=64)
    response = await client.post(
        "/v1/events/nope", content=b"x" * 65, headers={"content-type": "text/plain"}
    )
    assert_problem(response, 413, "payload_too_large")


async def test_wrong_content_type_for_unknown_source_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/events/nope", content=b"x", headers={"content-type": "text/plain"}
    )
    assert_problem(response, 415, "unsupported_media_type")


async def test_unknown_source_with_a_valid_signature_is_401_unknown_source(
    client: httpx.AsyncClient,
) -> None:
    body = event_body()
    response = await client.post(
        "/v1/events/stranger", content=body, headers=reference_headers(body)
    )
    assert_problem(response, 401, "unknown_source")


async def test_unsigned_malformed_body_is_401_not_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/events/acme", content=b"{", headers=JSON)
    assert_problem(response, 401, "signature_missing")


async def test_badly_signed_invalid_event_is_401_not_422(client: httpx.AsyncClient) -> None:
    """An unsigned caller learns nothing about the schema."""
    body = json.dumps({"event_id": ""}).encode()
    headers = reference_headers(body, TEST_SECRETS[0].replace("whsec_", "whsec_AAAA"))
    response = await client.post("/v1/events/acme", content=body, headers=headers)
    assert_problem(response, 401, "signature_invalid")


async def test_signed_malformed_body_is_400_not_422(client: httpx.AsyncClient) -> None:
    body = b'{"event_id": ""'
    response = await client.post("/v1/events/acme", content=body, headers=our_headers(body))
    assert_problem(response, 400, "malformed_json")


# ---------------------------------------------------------------- other problems


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/events/acme", headers={"X-Request-ID": "probe-1"})
    problem = assert_problem(response, 404, "not_found")
    assert problem["request_id"] == "probe-1"


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/", "/v1/events/acme/extra"])
async def test_ingest_paths_without_exactly_one_source_segment_are_404(
    client: httpx.AsyncClient, path: str
) -> None:
    body = event_body()
    response = await client.post(path, content=body, headers=reference_headers(body))
    assert_problem(response, 404, "not_found")


async def test_wrong_method_is_a_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/events/acme")
    assert_problem(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


async def test_unexpected_error_is_a_500_problem_that_leaks_nothing(
    app: Litestar, client: httpx.AsyncClient
) -> None:
    @get("/test-only/boom", sync_to_thread=False)
    def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    app.register(boom)

    response = await client.get("/test-only/boom")

    problem = assert_problem(response, 500, "internal_error")
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert "Traceback" not in response.text
    assert "request_id" in problem["detail"]


@pytest.mark.parametrize("signature", [b"v1,\xe9", b"v1,\xc3\xa9AAAA", b"v1,AAAA\xff v1,\x80"])
async def test_a_signature_with_bytes_outside_ascii_is_401_signature_invalid(
    client: httpx.AsyncClient, signature: bytes
) -> None:
    body = event_body()
    headers = [(k.encode(), v.encode()) for k, v in reference_headers(body).items()]
    headers = [(k, signature if k == b"webhook-signature" else v) for k, v in headers]
    response = await client.post("/v1/events/acme", content=body, headers=headers)
    assert_problem(response, 401, "signature_invalid")
