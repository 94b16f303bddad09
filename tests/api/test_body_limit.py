"""The body limit: exactly the limit is accepted, one byte more is 413, read no further."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from litestar import Litestar

from gateway_api.app import create_app
from shared.settings import Settings
from tests.api.expect import assert_problem
from tests.api.harness import RawExchange, running
from tests.factories import event_payload, our_headers, reference_headers

LIMIT = 4096
ClientFor = Callable[..., Awaitable[httpx.AsyncClient]]


def body_of_size(size: int) -> bytes:
    """A valid event padded to exactly ``size`` bytes."""
    payload: dict[str, Any] = event_payload(data={"pad": ""})
    unpadded = len(json.dumps(payload, separators=(",", ":")).encode())
    payload["data"]["pad"] = "x" * (size - unpadded)
    body = json.dumps(payload, separators=(",", ":")).encode()
    assert len(body) == size
    return body


async def test_body_exactly_at_the_limit_is_accepted(client_for: ClientFor) -> None:
    client = await client_for(max_body_bytes=LIMIT)
    body = body_of_size(LIMIT)
    response = await client.post("/v1/events/acme", content=body, headers=reference_headers(body))
    assert response.status_code == 202


async def test_body_one_byte_over_the_limit_is_413(client_for: ClientFor) -> None:
    client = await client_for(max_body_bytes=LIMIT)
    body = body_of_size(LIMIT + 1)
    response = await client.post("/v1/events/acme", content=body, headers=reference_headers(body))
    assert_problem(response, 413, "payload_too_large")


async def test_default_limit_is_256_kib(client: httpx.AsyncClient, settings: Settings) -> None:
    assert settings.max_body_bytes == 262_144
    at_limit, over = body_of_size(262_144), body_of_size(262_145)
    accepted = await client.post(
        "/v1/events/acme", content=at_limit, headers=reference_headers(at_limit)
    )
    refused = await client.post("/v1/events/acme", content=over, headers=reference_headers(over))
    assert accepted.status_code == 202
    assert_problem(refused, 413, "payload_too_large")


async def test_announced_oversized_body_is_refused_before_any_of_it_is_read(
    make_settings: Callable[..., Settings], redis: ArqRedis
) -> None:
    app = create_app(make_settings(max_body_bytes=LIMIT))
    exchange = RawExchange([b"x" * 1024] * 64)
    headers = {"content-type": "application/json", "content-length": str(64 * 1024)}
    async with running(app):
        await exchange.post(app, "/v1/events/acme", headers)
    assert exchange.status == 413
    assert exchange.chunks_read == 0
    assert json.loads(exchange.body)["code"] == "payload_too_large"


async def test_streamed_oversized_body_is_refused_without_being_read_whole(
    make_settings: Callable[..., Settings], redis: ArqRedis
) -> None:
    """A chunked body (no Content-Length) is cut off as soon as it passes the limit."""
    app = create_app(make_settings(max_body_bytes=LIMIT))
    exchange = RawExchange([b"x" * 1024] * 64)
    async with running(app):
        await exchange.post(app, "/v1/events/acme", {"content-type": "application/json"})
    assert exchange.status == 413
    assert exchange.header(b"content-type") == b"application/problem+json"
    assert json.loads(exchange.body)["code"] == "payload_too_large"
    # 4 chunks make exactly the limit; the 5th passes it, and nothing after it is pulled.
    assert exchange.chunks_read == 5


@pytest.mark.parametrize("chunk_size", [1, 100, 1000, LIMIT])
async def test_streamed_body_exactly_at_the_limit_is_accepted(
    make_settings: Callable[..., Settings], redis: ArqRedis, chunk_size: int
) -> None:
    app = create_app(make_settings(max_body_bytes=LIMIT))
    body = body_of_size(LIMIT)
    chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
    exchange = RawExchange(chunks)
    async with running(app):
        await exchange.post(app, "/v1/events/acme", our_headers(body))
    assert exchange.status == 202, exchange.body
    assert exchange.chunks_read == len(chunks)


class DisconnectingExchange(RawExchange):
    """Sends part of the body, then the client goes away."""

    async def receive(self) -> dict[str, Any]:
        if self.chunks_read == 0:
            self.chunks_read += 1
            return {"type": "http.request", "body": b'{"event_id":', "more_body": True}
        return {"type": "http.disconnect"}


async def test_client_that_disconnects_mid_body_is_a_client_error_not_a_500(
    app: Litestar,
) -> None:
    exchange = DisconnectingExchange([])
    await exchange.post(app, "/v1/events/acme", {"content-type": "application/json"})
    assert exchange.status == 400
    assert json.loads(exchange.body)["code"] == "bad_request"
