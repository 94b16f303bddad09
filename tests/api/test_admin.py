"""The admin API (docs/contract.md §3.2): bearer token, 404 when disabled, and every endpoint.

The app is the real one (``create_app``) on real Redis and MongoDB; replay
jobs are run by the worker's ``EventProcessor`` in process and deliver to the
mock downstream over HTTP.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from pymongo.asynchronous.database import AsyncDatabase

from shared.storage.mongo import DEAD_LETTER_EVENTS, PROCESSED_EVENTS, Document
from tests.api.expect import assert_bad_request, assert_problem, get_json
from tests.factories import (
    write_filter_letters,
    write_letter,
    write_letters,
    write_permanent_letter,
)
from tests.plugins.dlq import Outage, assert_discarded
from tests.plugins.servers import unchanged
from tests.plugins.worker import stored_letter

ClientFor = Callable[..., Awaitable[httpx.AsyncClient]]
TOKEN = "adm_" + secrets.token_urlsafe(24)  # generated per run
AUTH = {"authorization": f"Bearer {TOKEN}"}
KEY = "acme:evt_1"

ROUTES = [
    ("GET", f"/v1/admin/events/{KEY}"),
    ("GET", "/v1/admin/dead-letters"),
    ("GET", f"/v1/admin/dead-letters/{KEY}"),
    ("POST", f"/v1/admin/dead-letters/{KEY}/replay"),
    ("POST", f"/v1/admin/dead-letters/{KEY}/discard"),
    ("POST", "/v1/admin/dead-letters/replay"),
]


@pytest.fixture
async def admin(client_for: ClientFor) -> httpx.AsyncClient:
    """A client of an app with the admin token configured (requests carry no token)."""
    return await client_for(admin_token=TOKEN)


async def admin_json(admin: httpx.AsyncClient, path: str, **params: str) -> Any:
    """GET ``/v1/admin{path}`` with the token; it must answer 200. The JSON answer."""
    return await get_json(admin, f"/v1/admin{path}", params=params, headers=AUTH)


# ── access ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_admin_route_answers_404_like_an_unknown_route_when_no_token_is_set(
    client_for: ClientFor, mongo_db: AsyncDatabase[Document], method: str, path: str
) -> None:
    await write_letter(mongo_db, "evt_1")
    client = await client_for(admin_token=None)
    for headers in ({}, AUTH, {"authorization": "Bearer "}):
        response = await client.request(method, path, headers=headers, json={"reason": "x"})
        body = assert_problem(response, 404, "not_found")
        unknown = await client.request(method, "/v1/nothing-here", headers=headers)
        assert body["detail"] == unknown.json()["detail"]
    letter = await stored_letter(mongo_db, KEY)
    assert (letter.status, letter.replays) == ("pending", ())


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN],
    ids=["absent", "empty", "no-token", "wrong", "longer", "basic", "no-scheme"],
)
async def test_every_admin_route_answers_401_without_the_right_bearer_token(
    admin: httpx.AsyncClient,
    mongo_db: AsyncDatabase[Document],
    redis: ArqRedis,
    method: str,
    path: str,
    authorization: str | None,
) -> None:
    await write_letter(mongo_db, "evt_1")
    headers = {} if authorization is None else {"authorization": authorization}
    async with unchanged(mongo_db, redis):
        # A malformed query/body must not leak past the guard either.
        response = await admin.request(
            method, path, headers=headers, params={"limit": "oops"}, content=b"{not json"
        )
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_the_bearer_scheme_is_case_insensitive(
    admin: httpx.AsyncClient, mongo_db: AsyncDatabase[Document]
) -> None:
    await write_letter(mongo_db, "evt_1")
    response = await admin.get(
        "/v1/admin/dead-letters", headers={"authorization": f"bearer {TOKEN}"}
    )
    assert response.status_code == 200, response.text


# ── events ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("path_key", ["acme:evt_1", "acme%3Aevt_1"], ids=["colon", "encoded"])
async def test_event_endpoint_reports_status_attempts_and_last_error_for_a_key_with_a_colon(
    admin: httpx.AsyncClient, outage: Outage, path_key: str
) -> None:
    await outage.dead_letter("evt_1")
    record = await admin_json(admin, f"/events/{path_key}")
    assert (record["idempotency_key"], record["status"], record["attempts"]) == (
        KEY,
        "dead_lettered",
        2,
    )
    assert record["last_error"]["code"] == "downstream_unavailable"
    assert [a["attempt"] for a in record["attempt_log"]] == [1, 2]
    assert record["dead_letter_status"] == "pending"


async def test_event_endpoint_answers_404_for_an_unknown_key(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/v1/admin/events/acme:nope", headers=AUTH)
    body = assert_problem(response, 404, "not_found")
    assert "acme:nope" in body["detail"]


# ── dead letters: list and show ─────────────────────────────────────────────


async def test_list_filters_select_exactly_the_matching_entries_and_pages_with_the_cursor(
    admin: httpx.AsyncClient, mongo_db: AsyncDatabase[Document]
) -> None:
    a, b, c = await write_filter_letters(mongo_db)
    await mongo_db[DEAD_LETTER_EVENTS].update_one({"_id": c}, {"$set": {"status": "replayed"}})

    async def keys(**params: str) -> list[str]:
        listed = await admin_json(admin, "/dead-letters", **params)
        return [item["idempotency_key"] for item in listed["items"]]

    assert await keys() == [c, b, a]
    assert await keys(source="legacy") == [c]
    assert await keys(code="order_mismatch") == [b]
    assert await keys(reason="retries_exhausted") == [c, a]
    assert await keys(status="pending") == [b, a]
    assert await keys(since="2026-11-22T10:10:00Z") == [c, b]
    assert await keys(until="2026-11-22T10:10:00Z") == [a]
    assert await keys(since="2026-11-22T10:05:00Z", until="2026-11-22T10:15:00Z") == [b]
    assert await keys(source="acme", status="pending", code="downstream_unavailable") == [a]

    first = (await admin.get("/v1/admin/dead-letters?limit=2", headers=AUTH)).json()
    assert [i["idempotency_key"] for i in first["items"]] == [c, b]
    second = await admin_json(admin, "/dead-letters", limit="2", cursor=first["next_cursor"])
    assert second == {"items": second["items"], "next_cursor": None}
    assert [i["idempotency_key"] for i in second["items"]] == [a]


LIST_PARAMETERS: list[tuple[dict[str, str], str]] = [
    ({"limit": "0"}, "limit must be an integer from 1 to 500"),
    ({"limit": "501"}, "limit must be an integer from 1 to 500"),
    ({"limit": "ten"}, "limit must be an integer from 1 to 500"),
    ({"reason": "boredom"}, "reason must be one of permanent, retries_exhausted"),
    ({"status": "lost"}, "status must be one of pending, replayed, discarded"),
    ({"since": "last tuesday"}, "since: 'last tuesday' is not an RFC 3339 time"),
    ({"until": "soon"}, "until: 'soon' is not an RFC 3339 time"),
    ({"cursor": "garbage"}, "cursor is not one this service returned"),
]
BULK_REPLAY_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"status": "discarded"}, "only pending dead letters can be replayed"),
    ({"limit": 0}, "Expected `int` >= 1"),
    ({"limit": 501}, "Expected `int` <= 500"),
    ({"rate_per_s": 0}, "Expected `float` > 0.0"),
    ({"reason": "boredom"}, "Invalid enum value 'boredom'"),
    ({"since": "whenever"}, "since: 'whenever' is not an RFC 3339 time"),
]
INVALID_PARAMETERS = [
    pytest.param("GET", "/v1/admin/dead-letters", {"params": query}, message, id=f"list-{query}")
    for query, message in LIST_PARAMETERS
] + [
    pytest.param(
        "POST", "/v1/admin/dead-letters/replay", {"json": body}, message, id=f"bulk-{body}"
    )
    for body, message in BULK_REPLAY_BODIES
]


@pytest.mark.parametrize(("method", "path", "request_parts", "message"), INVALID_PARAMETERS)
async def test_invalid_list_or_bulk_replay_parameters_answer_400_saying_which_and_why(
    admin: httpx.AsyncClient,
    method: str,
    path: str,
    request_parts: dict[str, Any],
    message: str,
) -> None:
    response = await admin.request(method, path, headers=AUTH, **request_parts)
    assert_bad_request(response, message)


async def test_show_returns_the_event_every_attempt_and_every_replay(
    admin: httpx.AsyncClient, outage: Outage
) -> None:
    await outage.dead_letter("evt_1")
    await admin.post(f"/v1/admin/dead-letters/{KEY}/replay", headers=AUTH, json={"by": "carol"})
    detail = await admin_json(admin, f"/dead-letters/{KEY}")
    assert (detail["idempotency_key"], detail["status"], detail["reason"]) == (
        KEY,
        "pending",
        "retries_exhausted",
    )
    assert json.loads(detail["event"])["event_id"] == "evt_1"
    assert [a["attempt"] for a in detail["attempts"]] == [1, 2]
    assert [(r["by"], r["job_id"], r["outcome"]) for r in detail["replays"]] == [
        ("carol", f"replay/1/{KEY}", None)
    ]
    assert detail["processing"]["status"] == "dead_lettered"
    missing = await admin.get("/v1/admin/dead-letters/acme:nope", headers=AUTH)
    assert_problem(missing, 404, "not_found")


# ── replay ──────────────────────────────────────────────────────────────────


async def test_replay_one_queues_once_then_reports_in_flight_then_already_replayed(
    admin: httpx.AsyncClient, outage: Outage, mongo_db: AsyncDatabase[Document]
) -> None:
    await outage.dead_letter("evt_1", fixed=True)
    path = f"/v1/admin/dead-letters/{KEY}/replay"

    first = await admin.post(path, headers=AUTH)
    assert first.status_code == 202, first.text
    assert (first.json()["action"], first.json()["job_id"]) == ("enqueued", f"replay/1/{KEY}")
    second = await admin.post(path, headers=AUTH, json={"by": "dave"})
    assert (second.status_code, second.json()["action"]) == (200, "in_flight")
    assert await outage.drain() == {f"replay/1/{KEY}": "succeeded"}
    third = await admin.post(path, headers=AUTH)
    assert (third.status_code, third.json()["action"]) == (200, "already_replayed")

    assert await outage.delivered() == {KEY: 1}
    letter = await stored_letter(mongo_db, KEY)
    assert [(r.by, r.outcome) for r in letter.replays] == [("admin-api", "succeeded")]


async def test_replay_one_dry_run_changes_nothing(
    admin: httpx.AsyncClient, mongo_db: AsyncDatabase[Document], redis: ArqRedis
) -> None:
    await write_letter(mongo_db, "evt_1")
    async with unchanged(mongo_db, redis):
        response = await admin.post(
            f"/v1/admin/dead-letters/{KEY}/replay", headers=AUTH, json={"dry_run": True}
        )
        assert response.status_code == 200, response.text
        assert (response.json()["action"], response.json()["dry_run"]) == ("would_enqueue", True)


async def test_replay_of_an_event_that_already_succeeded_is_a_200_no_op(
    admin: httpx.AsyncClient, outage: Outage, mongo_db: AsyncDatabase[Document]
) -> None:
    await outage.dead_letter("evt_1")
    await mongo_db[PROCESSED_EVENTS].update_one({"_id": KEY}, {"$set": {"status": "succeeded"}})
    response = await admin.post(f"/v1/admin/dead-letters/{KEY}/replay", headers=AUTH)
    assert (response.status_code, response.json()["action"]) == (200, "already_succeeded")
    assert await outage.queued() == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "body is not valid JSON"),
        (b'{"dry_run": "yes"}', "Expected `bool`"),
        (b'{"by": ""}', "body.by: Expected `str` of length >= 1"),
        (b'{"surprise": 1}', "unknown field `surprise`"),
    ],
)
async def test_replay_one_with_an_invalid_body_is_400(
    admin: httpx.AsyncClient, mongo_db: AsyncDatabase[Document], body: bytes, message: str
) -> None:
    await write_letter(mongo_db, "evt_1")
    response = await admin.post(f"/v1/admin/dead-letters/{KEY}/replay", headers=AUTH, content=body)
    assert_bad_request(response, message)


async def test_replay_of_unknown_or_discarded_entries_is_404_or_409(
    admin: httpx.AsyncClient, mongo_db: AsyncDatabase[Document]
) -> None:
    missing = await admin.post("/v1/admin/dead-letters/acme:nope/replay", headers=AUTH)
    assert_problem(missing, 404, "not_found")
    await write_letter(mongo_db, "evt_1")
    await admin.post(f"/v1/admin/dead-letters/{KEY}/discard", headers=AUTH, json={"reason": "test"})
    refused = await admin.post(f"/v1/admin/dead-letters/{KEY}/replay", headers=AUTH)
    assert "discarded" in assert_problem(refused, 409, "conflict")["detail"]


async def test_bulk_replay_takes_the_filters_limit_and_dry_run(
    admin: httpx.AsyncClient, outage: Outage, mongo_db: AsyncDatabase[Document], redis: ArqRedis
) -> None:
    await write_letters(mongo_db, 3, every=timedelta(minutes=1))
    await write_permanent_letter(mongo_db, "evt_om")
    await write_letter(mongo_db, "evt_l", source="legacy")
    filters = {"source": "acme", "code": "downstream_unavailable"}

    async with unchanged(mongo_db, redis):
        dry = await admin.post(
            "/v1/admin/dead-letters/replay", headers=AUTH, json={**filters, "dry_run": True}
        )
        assert dry.status_code == 200, dry.text
        assert dry.json()["summary"]["would_enqueue"] == 3

    run = await admin.post(
        "/v1/admin/dead-letters/replay",
        headers=AUTH,
        json={**filters, "limit": 2, "by": "erin", "rate_per_s": 1000},
    )
    assert run.status_code == 200, run.text
    answer = run.json()
    assert (answer["summary"]["matched"], answer["summary"]["enqueued"]) == (2, 2)
    assert [r["idempotency_key"] for r in answer["results"]] == ["acme:evt_2", "acme:evt_1"]
    assert await outage.queued() == 2


# ── discard ─────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b'{"reason": null}', b'{"reason": "   "}'],
    ids=["none", "empty", "null", "blank"],
)
async def test_discard_without_a_reason_is_refused_and_changes_nothing(
    admin: httpx.AsyncClient, mongo_db: AsyncDatabase[Document], redis: ArqRedis, body: bytes
) -> None:
    await write_letter(mongo_db, "evt_1")
    async with unchanged(mongo_db, redis):
        response = await admin.post(
            f"/v1/admin/dead-letters/{KEY}/discard", headers=AUTH, content=body
        )
        problem = assert_problem(response, 400, "bad_request")
        assert "reason" in problem["detail"] or "body is required" in problem["detail"]


async def test_discard_records_reason_and_operator(
    admin: httpx.AsyncClient, mongo_db: AsyncDatabase[Document]
) -> None:
    await write_letter(mongo_db, "evt_1")
    response = await admin.post(
        f"/v1/admin/dead-letters/{KEY}/discard",
        headers=AUTH,
        json={"reason": "order corrected upstream", "by": "frank"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "idempotency_key": KEY,
        "status": "discarded",
        "discard_reason": "order corrected upstream",
        "discarded_by": "frank",
        "already_discarded": False,
    }
    await assert_discarded(mongo_db, KEY, "order corrected upstream", "frank")
    missing = await admin.post(
        "/v1/admin/dead-letters/acme:nope/discard", headers=AUTH, json={"reason": "x"}
    )
    assert_problem(missing, 404, "not_found")


async def test_admin_routes_are_in_the_openapi_schema(admin: httpx.AsyncClient) -> None:
    schema = (await admin.get("/schema/openapi.json")).json()
    for path in (
        "/v1/admin/events/{idempotency_key}",
        "/v1/admin/dead-letters",
        "/v1/admin/dead-letters/{idempotency_key}",
        "/v1/admin/dead-letters/{idempotency_key}/replay",
        "/v1/admin/dead-letters/{idempotency_key}/discard",
        "/v1/admin/dead-letters/replay",
    ):
        assert path in schema["paths"], path
