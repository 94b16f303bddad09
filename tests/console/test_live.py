"""Live status changes (docs/contract.md §3.5): the worker's PUBLISH, the relay, the streams.

Real Redis pub/sub throughout; the SSE stream is read over a real socket from
a uvicorn server running the real app in this event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import httpx
import msgspec
import uvicorn
from arq.connections import ArqRedis
from litestar import Litestar
from pymongo.asynchronous.database import AsyncDatabase

from gateway_api.app import create_app, create_apps
from gateway_api.console.live import CLIENT_BUFFER, StatusRelay, event_stream
from gateway_worker.jobs import EventProcessor
from gateway_worker.metrics import WorkerMetrics
from scripts.harness.mock_downstream import MockDownstreamClient
from scripts.harness.services import free_port
from shared.live import StatusChange, channel, encode_change
from shared.settings import Settings
from shared.storage.events import ATTEMPT_LOG_LIMIT, AttemptRecord, Claimed, ProcessedEvents
from shared.storage.mongo import Document
from tests.api.harness import asgi_client, running
from tests.console.conftest import TOKEN
from tests.factories import T0, make_event, payload
from tests.plugins.worker import run_job

AUTH = {"authorization": f"Bearer {TOKEN}"}


def change(key: str, status: str = "succeeded", source: str = "acme") -> StatusChange:
    return StatusChange(idempotency_key=key, source=source, status=status)


async def test_the_worker_publishes_each_status_change_of_a_retried_event(
    worker_settings: Callable[..., Settings],
    mongo_db: AsyncDatabase[Document],
    redis: ArqRedis,
    downstream: MockDownstreamClient,
    downstream_url: str,
    make_processor: Callable[..., EventProcessor],
) -> None:
    settings = worker_settings(max_attempts=3)
    base = make_processor(settings, downstream=downstream_url)
    processor = EventProcessor(
        db=mongo_db,
        settings=settings,
        worker_id="test-worker",
        metrics=WorkerMetrics(),
        downstream=base._downstream,
        publish=redis.publish,
    )
    await downstream.control(fail_first=1)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel(settings.queue_name))
    try:
        queued = make_event("evt_pub")
        assert await run_job(processor, queued.idempotency_key, payload(queued)) == "succeeded"
        seen: list[dict[str, object]] = []
        async with asyncio.timeout(10):
            while len(seen) < 4:
                # None: the subscription's own confirmation (ignored), or nothing yet.
                message = await pubsub.get_message(timeout=1)
                if message is not None:
                    seen.append(json.loads(message["data"]))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert [(m["status"], m.get("attempt", 0)) for m in seen] == [
        ("processing", 0),
        ("retrying", 1),
        ("processing", 1),
        ("succeeded", 1),
    ]
    assert {m["idempotency_key"] for m in seen} == {"acme:evt_pub"}
    assert seen[1]["code"] == "downstream_unavailable"


async def test_the_attempt_log_keeps_the_newest_entries_and_the_exact_count(
    mongo_db: AsyncDatabase[Document],
) -> None:
    events = ProcessedEvents(mongo_db)
    total = ATTEMPT_LOG_LIMIT + 5
    for n in range(1, total + 1):
        token = f"t{n}"
        claim = await events.claim(
            "acme:evt_log",
            source="acme",
            event_id="evt_log",
            job_id="acme:evt_log",
            owner="w",
            token=token,
            now=T0 + timedelta(minutes=n),
            lease_s=30,
        )
        assert isinstance(claim, Claimed)
        attempt = AttemptRecord(
            attempt=n,
            at=T0 + timedelta(minutes=n),
            code="downstream_unavailable",
            message=f"try {n}",
            transient=True,
            duration_ms=n,
            retry_in_ms=10,
        )
        assert await events.record_failure("acme:evt_log", token=token, attempt=attempt, now=T0)
    record = await events.get("acme:evt_log")
    assert record is not None
    assert record.attempts == total
    assert [a.attempt for a in record.attempt_log] == list(range(6, total + 1))


async def test_the_relay_fans_out_filtered_and_bounds_a_slow_client(
    redis: ArqRedis, settings: Settings
) -> None:
    relay = StatusRelay(redis, channel(settings.queue_name))
    await relay.start()
    try:
        await asyncio.wait_for(relay.connected.wait(), 5)
        last = f"acme:n{CLIENT_BUFFER + 4}"
        with (
            relay.subscribe(lambda c: c.idempotency_key == "acme:a") as only_a,
            relay.subscribe(lambda c: True) as everything,
            relay.subscribe(lambda c: c.idempotency_key == last) as marker,
        ):
            for key in ("acme:a", "acme:b"):
                await redis.publish(channel(settings.queue_name), encode_change(change(key)))
            await redis.publish(channel(settings.queue_name), b"not json")
            for n in range(CLIENT_BUFFER + 5):
                await redis.publish(
                    channel(settings.queue_name), encode_change(change(f"acme:n{n}"))
                )
            # Messages are fanned out in order: once the last reached one buffer, all did.
            await asyncio.wait_for(marker.queue.get(), 10)
            assert everything.overflowed
            assert only_a.queue.qsize() == 1
            assert not only_a.overflowed
            assert everything.queue.qsize() == CLIENT_BUFFER
            # The oldest were dropped: the newest is the last in the buffer.
            kept = [everything.queue.get_nowait() for _ in range(CLIENT_BUFFER)]
            assert msgspec.json.decode(kept[-1])["idempotency_key"] == last
            assert relay.clients == 3
        assert relay.clients == 0
    finally:
        await relay.stop()


async def test_a_client_that_overflowed_is_told_to_resync(
    redis: ArqRedis, settings: Settings
) -> None:
    relay = StatusRelay(redis, channel(settings.queue_name))
    stream = event_stream(relay, lambda c: True)
    assert (await anext(stream)).startswith(b"retry:")
    (subscriber,) = relay._subscribers
    for n in range(CLIENT_BUFFER + 1):
        subscriber.offer(change(f"acme:{n}"), encode_change(change(f"acme:{n}")))
    assert await anext(stream) == b"event: resync\ndata: {}\n\n"
    assert (await anext(stream)).startswith(b"event: status\ndata: {")
    await stream.aclose()
    assert relay.clients == 0


@contextlib.asynccontextmanager
async def serving(app: Litestar) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_the_admin_stream_relays_changes_as_server_sent_events(
    make_settings: Callable[..., Settings], redis: ArqRedis
) -> None:
    settings = make_settings(admin_token=TOKEN)
    app = create_app(settings)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (await client.get("/v1/admin/stream")).status_code == 401
        wrong = await client.get("/v1/admin/stream", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        async with client.stream(
            "GET", "/v1/admin/stream", params={"source": "acme"}, headers=AUTH
        ) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            lines = answer.aiter_lines()
            assert (await anext(lines)).startswith("retry:")
            relay: StatusRelay = app.state.status_relay
            async with asyncio.timeout(5):
                while relay.clients == 0:  # noqa: ASYNC110 - the server's task subscribes
                    await asyncio.sleep(0.01)
            target = channel(settings.queue_name)
            await redis.publish(target, encode_change(change("legacy:x", source="legacy")))
            await redis.publish(target, encode_change(change("acme:evt_sse")))
            async with asyncio.timeout(5):
                async for line in lines:
                    if line.startswith("data:"):
                        break
            data = json.loads(line.removeprefix("data:"))
            assert data["idempotency_key"] == "acme:evt_sse"
            assert data["source"] == "acme"
            assert data["status"] == "succeeded"


async def test_without_an_admin_token_the_stream_does_not_exist(
    make_settings: Callable[..., Settings], redis: ArqRedis
) -> None:
    app = create_app(make_settings(admin_token=None))
    async with running(app), asgi_client(app) as client:
        assert (await client.get("/v1/admin/stream", headers=AUTH)).status_code == 404
    assert app.state.status_relay is None


async def test_with_an_admin_port_the_public_app_has_no_admin_surface(
    make_settings: Callable[..., Settings], redis: ArqRedis
) -> None:
    settings = make_settings(admin_token=TOKEN, admin_port=free_port())
    (public, public_port), (internal, internal_port) = create_apps(settings)
    assert (public_port, internal_port) == (settings.port, settings.admin_port)
    async with (
        running(public),
        running(internal),
        asgi_client(public) as outside,
        asgi_client(internal) as inside,
    ):
        for path in ("/console/login", "/v1/admin/dead-letters", "/v1/admin/stream"):
            assert (await outside.get(path, headers=AUTH)).status_code == 404, path
        assert (await outside.get("/health/live")).status_code == 200
        assert (await inside.get("/console/login")).status_code == 200
        assert (await inside.get("/v1/admin/dead-letters", headers=AUTH)).status_code == 200
        assert (await inside.post("/v1/events/acme", content=b"{}")).status_code == 404
    # Both lifespans shared one set of clients, closed when the last app stopped.
    assert public.state.resources is internal.state.resources


async def test_one_port_serves_everything_when_no_admin_port_is_set(
    make_settings: Callable[..., Settings], redis: ArqRedis
) -> None:
    ((app, _port),) = create_apps(make_settings(admin_token=TOKEN))
    async with running(app), asgi_client(app) as client:
        assert (await client.get("/console/login")).status_code == 200
        assert (await client.get("/v1/admin/dead-letters", headers=AUTH)).status_code == 200
