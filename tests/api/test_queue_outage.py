"""Redis outages: never 2xx unless the job is in Redis, and recovery without a restart."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import httpx
import pytest
from arq.connections import ArqRedis

from gateway_api.app import create_app
from scripts.harness.services import RedisServer
from shared.settings import Settings
from tests.api.expect import assert_problem, queued_job
from tests.api.harness import running
from tests.factories import event_body, new_event_id, reference_headers


@pytest.fixture
def frozen_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """Yield a helper that SIGSTOPs the test Redis; it is always resumed afterwards."""
    try:
        yield redis_server
    finally:
        if redis_server.process is not None:
            redis_server.process.send_signal(signal.SIGCONT)


async def post_new_event(client: httpx.AsyncClient) -> tuple[str, httpx.Response]:
    event_id = new_event_id()
    body = event_body(event_id)
    response = await client.post("/v1/events/acme", content=body, headers=reference_headers(body))
    return event_id, response


async def test_redis_down_answers_503_then_recovers_in_the_same_app(
    client: httpx.AsyncClient, redis_server: RedisServer, settings: Settings
) -> None:
    _, before = await post_new_event(client)
    assert before.status_code == 202

    redis_server.stop()
    _, during = await post_new_event(client)
    ready_during = await client.get("/health/ready")

    problem = assert_problem(during, 503, "queue_unavailable")
    assert during.headers["retry-after"] == "5"
    assert "retry" in problem["detail"]
    assert ready_during.status_code == 503
    assert ready_during.json()["checks"]["redis"]["ok"] is False

    redis_server.start()
    event_id, after = await post_new_event(client)
    ready_after = await client.get("/health/ready")

    assert after.status_code == 202
    assert ready_after.status_code == 200
    redis = await ArqRedis.from_url(redis_server.url)
    try:
        assert await redis.zscore(settings.queue_name, f"acme:{event_id}") is not None
    finally:
        await redis.aclose()


async def test_first_request_after_a_redis_restart_succeeds(
    client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    """Pooled connections to the old server are replaced, not failed on."""
    for _ in range(3):
        assert (await post_new_event(client))[1].status_code == 202
    redis_server.restart()
    assert (await post_new_event(client))[1].status_code == 202


async def test_resubmission_while_redis_is_down_is_503_not_a_guessed_duplicate(
    client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    """arq's enqueue_job answers None for "exists" and for a lost connection alike.

    (docs/contract.md §4.2.)

    Our enqueue answers only "stored" or "exists" from Redis itself; any doubt is 503.
    """
    event_id = new_event_id()
    body = event_body(event_id)
    assert (
        await client.post("/v1/events/acme", content=body, headers=reference_headers(body))
    ).status_code == 202

    redis_server.stop()
    again = await client.post("/v1/events/acme", content=body, headers=reference_headers(body))

    assert_problem(again, 503, "queue_unavailable")


async def test_redis_down_at_startup_stops_the_app_from_starting(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    redis_server.stop()
    app = create_app(make_settings())
    with pytest.raises(RuntimeError, match="cannot reach Redis"):
        async with running(app):
            pass


@pytest.mark.slow
async def test_hung_redis_answers_503_within_the_enqueue_timeout(
    client: httpx.AsyncClient, frozen_redis: RedisServer, redis: ArqRedis
) -> None:
    assert frozen_redis.process is not None
    frozen_redis.process.send_signal(signal.SIGSTOP)

    _, during = await post_new_event(client)
    ready = await client.get("/health/ready")

    assert_problem(during, 503, "queue_unavailable")
    assert during.headers["retry-after"] == "5"
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] == {"ok": False, "error": "no answer within 1.0 s"}

    frozen_redis.process.send_signal(signal.SIGCONT)
    event_id, after = await post_new_event(client)
    assert after.status_code == 202
    assert (await queued_job(redis, f"acme:{event_id}")).event.event_id == event_id
