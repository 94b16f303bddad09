"""Signed downstream delivery over real HTTP, and the mock downstream's rules."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway_worker.downstream import Downstream, parse_retry_after
from gateway_worker.errors import DownstreamStatusError, DownstreamTimeout, DownstreamUnreachable
from scripts.harness.mock_downstream import MockDownstreamClient
from scripts.harness.services import free_port
from shared.contracts import CourierEvent, QueuedEvent
from shared.signing import generate_secret, signed_headers
from tests.factories import DOWNSTREAM_SECRET, make_event

NOW = 1_800_000_000.0


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


async def post(client: httpx.AsyncClient, url: str, key: str) -> int:
    """POST a signed empty object as ``key``; the status answered."""
    headers = signed_headers(DOWNSTREAM_SECRET, key, b"{}", time.time())
    return (await client.post(url, content=b"{}", headers=headers)).status_code


def job(status: str) -> tuple[QueuedEvent, str, CourierEvent]:
    """What the worker hands the deliverer: the job, the status, the job's decoded event."""
    queued = make_event()
    return queued, status, queued.event


def deliverer(
    client: httpx.AsyncClient, url: str, *, secret: str = DOWNSTREAM_SECRET, timeout_s: float = 2.0
) -> Downstream:
    return Downstream(client, url, secret, timeout_s=timeout_s)


async def test_delivery_is_signed_with_the_idempotency_key_as_webhook_id(
    client: httpx.AsyncClient, downstream: MockDownstreamClient, downstream_url: str
) -> None:
    await deliverer(client, downstream_url).deliver(*job("picked_up"))
    (delivery,) = (await downstream.deliveries()).deliveries
    assert (delivery.webhook_id, delivery.signature_ok, delivery.status) == (
        "acme:evt_1",
        True,
        200,
    )
    assert delivery.body["occurred_at"] == "2026-11-22T10:00:00Z"


async def test_delivery_signed_with_another_secret_is_refused(
    client: httpx.AsyncClient, downstream: MockDownstreamClient, downstream_url: str
) -> None:
    with pytest.raises(DownstreamStatusError) as error:
        await deliverer(client, downstream_url, secret=generate_secret()).deliver(*job("picked_up"))
    assert error.value.status == 401
    assert (await downstream.deliveries()).deliveries[0].signature_ok is False


async def test_non_2xx_answer_carries_its_status_and_retry_after(
    client: httpx.AsyncClient, downstream: MockDownstreamClient, downstream_url: str
) -> None:
    await downstream.control(fail_first=1, retry_after="12")
    with pytest.raises(DownstreamStatusError) as error:
        await deliverer(client, downstream_url).deliver(*job("picked_up"))
    assert (error.value.status, error.value.retry_after_s) == (503, 12.0)


async def test_slow_downstream_is_a_downstream_timeout(
    client: httpx.AsyncClient, downstream: MockDownstreamClient, downstream_url: str
) -> None:
    await downstream.control(latency_ms=2000)
    with pytest.raises(DownstreamTimeout):
        await deliverer(client, downstream_url, timeout_s=0.2).deliver(*job("x"))


async def test_refused_connection_is_downstream_unreachable_without_the_url(
    client: httpx.AsyncClient,
) -> None:
    url = f"http://user:hunter2@127.0.0.1:{free_port()}/hook"
    with pytest.raises(DownstreamUnreachable) as error:
        await deliverer(client, url).deliver(*job("picked_up"))
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
        (email.utils.formatdate(NOW - 90, usegmt=True), 0.0),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
    ],
)
def test_retry_after_accepts_seconds_and_http_dates(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


async def test_mock_fails_each_keys_first_deliveries_then_succeeds(
    client: httpx.AsyncClient, downstream: MockDownstreamClient, downstream_url: str
) -> None:
    await downstream.control(fail_first=2)
    answers = []
    for key in ("k1", "k1", "k2", "k1", "k2", "k2"):
        answers.append(await post(client, downstream_url, key))
    assert answers == [503, 503, 503, 200, 503, 200]
    log = await downstream.deliveries()
    assert (log.counts, log.ok) == ({"k1": 3, "k2": 3}, {"k1": 1, "k2": 1})


async def test_mock_failure_rates_are_reproducible_with_a_seed(
    client: httpx.AsyncClient, downstream: MockDownstreamClient, downstream_url: str
) -> None:
    async def run() -> list[int]:
        await downstream.control(seed=3, transient_rate=0.3, permanent_rate=0.2)
        return [await post(client, downstream_url, f"k{n}") for n in range(40)]

    first = await run()
    await downstream.reset()
    assert await run() == first
    assert {200, 400, 503} <= set(first)
