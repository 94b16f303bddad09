"""The console's pages, login, sessions and CSRF (docs/contract.md §3.5), in process.

The app is the real one on real Redis and MongoDB; events are processed by the
worker's own ``EventProcessor`` delivering to the mock downstream over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from arq.connections import ArqRedis
from pymongo.asynchronous.database import AsyncDatabase

from gateway_api.app import create_app
from gateway_worker.jobs import EventProcessor
from scripts.harness.mock_downstream import MockDownstreamClient
from shared.settings import Settings
from shared.storage.mongo import DEAD_LETTER_EVENTS, Document
from tests.api.harness import asgi_client, running
from tests.console.conftest import TOKEN, csrf_token, form_token, log_in
from tests.factories import make_event, payload, write_letter
from tests.plugins.worker import dead_letter_via_worker, run_job


@pytest.fixture
def processor(
    worker_settings: Callable[..., Settings],
    make_processor: Callable[..., EventProcessor],
    downstream: MockDownstreamClient,
    downstream_url: str,
) -> EventProcessor:
    return make_processor(worker_settings(max_attempts=3), downstream=downstream_url)


async def test_without_an_admin_token_the_console_does_not_exist(
    make_settings: Callable[..., Settings], redis: ArqRedis
) -> None:
    app = create_app(make_settings(admin_token=None))
    async with running(app), asgi_client(app) as client:
        for path in ("/console", "/console/login", "/console/dead-letters"):
            assert (await client.get(path)).status_code == 404
        assert (await client.post("/console/login", data={"token": "x"})).status_code == 404


async def test_pages_without_a_session_redirect_to_the_login(console: httpx.AsyncClient) -> None:
    for path in ("/console", "/console/events?q=x", "/console/dead-letters", "/console/stream"):
        answer = await console.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"] == "/console/login"


async def test_a_wrong_token_is_401_and_sets_no_session(console: httpx.AsyncClient) -> None:
    answer = await log_in(console, token="not-the-token")
    assert answer.status_code == 401
    assert "not the admin token" in answer.text
    assert "gateway_console=" not in answer.headers.get("set-cookie", "")
    assert (await console.get("/console")).status_code == 303


async def test_login_sets_a_strict_httponly_session_and_logout_ends_it(
    console: httpx.AsyncClient,
) -> None:
    answer = await log_in(console)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console"
    cookie = next(
        c for c in answer.headers.get_list("set-cookie") if c.startswith("gateway_console=")
    )
    assert "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here; Secure behind HTTPS
    assert TOKEN not in cookie
    assert TOKEN not in answer.headers["location"]
    overview = await console.get("/console")
    assert overview.status_code == 200
    assert "Last hour" in overview.text
    session_id = console.cookies["gateway_console"]

    token = csrf_token(overview.text)
    out = await console.post("/console/logout", data={"_csrf_token": token})
    assert out.status_code == 303
    assert (await console.get("/console")).status_code == 303
    # The old cookie no longer opens a page: the session is gone from Redis.
    console.cookies.set("gateway_console", session_id, domain="gateway.test", path="/console")
    assert (await console.get("/console")).status_code == 303


async def test_a_post_without_the_csrf_token_is_403_and_changes_nothing(
    session: httpx.AsyncClient, mongo_db: AsyncDatabase[Document]
) -> None:
    key = await write_letter(mongo_db, "evt_csrf")
    for data in ({"reason": "spam"}, {"reason": "spam", "_csrf_token": "forged" * 20}):
        answer = await session.post(f"/console/dead-letters/{key}/discard", data=data)
        assert answer.status_code == 403
    letter = await mongo_db[DEAD_LETTER_EVENTS].find_one({"idempotency_key": key})
    assert letter is not None
    assert letter["status"] == "pending"
    # A login without it is refused the same way, before the token is looked at.
    fresh = await session.post("/console/login", data={"token": TOKEN})
    assert fresh.status_code == 403


async def test_search_by_tracking_number_leads_to_the_shipment_and_its_events(
    session: httpx.AsyncClient, processor: EventProcessor
) -> None:
    queued = make_event("evt_track", shipment_id="shp_track")
    assert await run_job(processor, queued.idempotency_key, payload(queued)) == "succeeded"

    hits = await session.get("/console/events", params={"q": "1Z999"})
    assert hits.status_code == 200
    assert "tracking_number" in hits.text
    assert "/console/shipments/acme/shp_track" in hits.text

    shipment = await session.get("/console/shipments/acme/shp_track")
    assert shipment.status_code == 200
    assert "picked_up" in shipment.text
    assert "/console/events/acme%3Aevt_track" in shipment.text

    # An exact event id or key goes straight to the event's page.
    for q in ("evt_track", "acme:evt_track"):
        found = await session.get("/console/events", params={"q": q})
        assert found.status_code == 303
        assert found.headers["location"] == "/console/events/acme:evt_track"
    assert "0 matches" in (await session.get("/console/events", params={"q": "nope"})).text


async def test_the_event_page_shows_each_attempt_the_outcome_and_the_body(
    session: httpx.AsyncClient, processor: EventProcessor, downstream: MockDownstreamClient
) -> None:
    await downstream.control(fail_first=2)
    queued = make_event("evt_retries")
    assert await run_job(processor, queued.idempotency_key, payload(queued)) == "succeeded"

    page = await session.get("/console/events/acme:evt_retries")
    assert page.status_code == 200
    assert page.text.count("failed:") == 2
    assert "attempt 1 failed" in page.text
    assert "attempt 2 failed" in page.text
    assert "downstream_unavailable" in page.text
    assert 'class="status succeeded"' in page.text
    assert "/console/shipments/acme/shp_1" in page.text
    # The courier's body as received, byte-exact (HTML-escaped).
    assert queued.body.decode().replace('"', "&#34;") in page.text

    missing = await session.get("/console/events/acme:evt_unknown")
    assert missing.status_code == 404


async def test_dead_letters_filtered_dry_run_then_confirm_replays_them(
    session: httpx.AsyncClient,
    mongo_db: AsyncDatabase[Document],
    redis: ArqRedis,
    settings: Settings,
) -> None:
    wanted = [
        await write_letter(mongo_db, f"evt_a{n}", code="downstream_rejected") for n in range(3)
    ]
    other = await write_letter(mongo_db, "evt_b", code="invalid_transition")

    listed = await session.get(
        "/console/dead-letters", params={"status": "pending", "code": "downstream_rejected"}
    )
    assert listed.status_code == 200
    assert all(key in listed.text for key in wanted)
    assert other not in listed.text

    preview = await session.get(
        "/console/dead-letters/replay", params={"code": "downstream_rejected"}
    )
    assert preview.status_code == 200
    assert "<strong>3</strong> of 3" in preview.text
    assert all(key in preview.text for key in wanted)
    assert await redis.zcard(settings.queue_name) == 0  # a dry run queues nothing

    confirmed = await session.post(
        "/console/dead-letters/replay",
        data={
            "code": "downstream_rejected",
            "status": "pending",
            "_csrf_token": csrf_token(preview.text),
        },
    )
    assert confirmed.status_code == 200
    assert "enqueued 3" in confirmed.text
    assert await redis.zcard(settings.queue_name) == 3
    letter = await mongo_db[DEAD_LETTER_EVENTS].find_one({"idempotency_key": other})
    assert letter is not None
    assert letter["replays"] == []


async def test_replay_one_and_discard_with_a_reason(
    session: httpx.AsyncClient,
    mongo_db: AsyncDatabase[Document],
    processor: EventProcessor,
    downstream: MockDownstreamClient,
) -> None:
    await downstream.control(always={"acme:evt_dl": 400})
    queued = make_event("evt_dl")
    await dead_letter_via_worker(processor, queued)
    page = await session.get("/console/events/acme:evt_dl")
    assert 'class="status dead_lettered"' in page.text
    token = csrf_token(page.text)

    blank = await session.post(
        "/console/dead-letters/acme:evt_dl/discard", data={"reason": " ", "_csrf_token": token}
    )
    assert blank.status_code == 400
    assert "needs a reason" in blank.text

    replayed = await session.post(
        "/console/dead-letters/acme:evt_dl/replay", data={"_csrf_token": token}
    )
    assert replayed.status_code == 303
    assert replayed.headers["location"] == "/console/events/acme:evt_dl?done=enqueued"

    other = await write_letter(mongo_db, "evt_discard")
    token = await form_token(session, f"/console/events/{other}")
    discarded = await session.post(
        f"/console/dead-letters/{other}/discard",
        data={"reason": "courier test traffic", "_csrf_token": token},
    )
    assert discarded.status_code == 303
    letter = await mongo_db[DEAD_LETTER_EVENTS].find_one({"idempotency_key": other})
    assert letter is not None
    assert letter["status"] == "discarded"
    assert letter["discard_reason"] == "courier test traffic"
    shown = await session.get(f"/console/events/{other}")
    assert "courier test traffic" in shown.text


async def test_the_overview_counts_the_last_hour_per_source(
    session: httpx.AsyncClient,
    mongo_db: AsyncDatabase[Document],
    processor: EventProcessor,
    downstream: MockDownstreamClient,
) -> None:
    await downstream.control(always={"acme:evt_o3": 400})
    for n in (1, 2, 3):
        queued = make_event(f"evt_o{n}", shipment_id=f"shp_o{n}")
        await run_job(processor, queued.idempotency_key, payload(queued))
    page = await session.get("/console")
    assert page.status_code == 200
    row = page.text.split("<td>acme</td>", 1)[1].split("</tr>", 1)[0]
    cells = [cell.split("</td>")[0] for cell in row.split("<td>")[1:6]]
    assert cells == ["3", "2", "0", "1", "0"]  # accepted, succeeded, retried, dead, in flight
    assert "downstream_rejected" in page.text
    assert "<svg" in page.text
