"""Ingest of carrier requests (docs/contract.md §3.4), at the API alone.

What the end-to-end test (``test_carriers_end_to_end.py``) does not need a
worker for: a verified notification that is not a tracking update is answered
200 ``ignored``, counted and never queued; a tracking update missing a field
is 422 naming it by JSON Pointer; a body that is not JSON is 400 after the
signature check; each source's adapter is exposed as a metric label.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from shared.adapters.config import parse_source_config
from shared.settings import Settings
from tests.api.test_metrics import samples, value
from tests.shared.adapters.carriers import (
    CARRIERS,
    SECRET,
    Carrier,
    document,
    encode,
    set_path,
)

JSON = {"content-type": "application/json"}
StartClient = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def client(client_for: StartClient) -> httpx.AsyncClient:
    """The API with every carrier configured as a source named after it."""
    sources = {c.name: parse_source_config(c.name, c.config) for c in CARRIERS}
    return await client_for(sources=sources)


def signed(carrier: Carrier, body: bytes) -> dict[str, str]:
    return {**JSON, **carrier.sign(body, SECRET, int(time.time()))}


@pytest.mark.parametrize(
    "carrier", [c for c in CARRIERS if c.ignored is not None], ids=lambda c: c.name
)
async def test_a_notification_that_is_not_a_tracking_update_is_ignored_and_counted(
    client: httpx.AsyncClient, redis: ArqRedis, settings: Settings, carrier: Carrier
) -> None:
    assert carrier.ignored is not None
    body = encode(carrier.ignored)
    answer = await client.post(
        f"/v1/events/{carrier.name}", content=body, headers=signed(carrier, body)
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ignored"
    assert answer.json()["reason"]
    assert answer.json()["request_id"]
    assert await redis.zcard(settings.queue_name) == 0
    adapter = str(carrier.config["adapter"])
    found = await samples(client)
    assert value(found, "gateway_events_ignored_total", source=carrier.name, adapter=adapter) == 1
    assert value(found, "gateway_events_accepted_total", source=carrier.name) == 0


@pytest.mark.parametrize("carrier", CARRIERS, ids=lambda c: c.name)
async def test_a_tracking_update_missing_a_field_is_422_naming_it_by_json_pointer(
    client: httpx.AsyncClient, redis: ArqRedis, settings: Settings, carrier: Carrier
) -> None:
    for path, pointer in carrier.required.items():
        body = encode(set_path(document(carrier.example), path, ...))
        answer = await client.post(
            f"/v1/events/{carrier.name}", content=body, headers=signed(carrier, body)
        )
        assert answer.status_code == 422, (pointer, answer.text)
        problem: dict[str, Any] = answer.json()
        assert problem["code"] == "validation_failed"
        assert pointer in [error["field"] for error in problem["errors"]], problem
    assert await redis.zcard(settings.queue_name) == 0


@pytest.mark.parametrize("carrier", CARRIERS, ids=lambda c: c.name)
async def test_a_verified_body_that_is_not_json_is_400_and_an_unsigned_one_401(
    client: httpx.AsyncClient, carrier: Carrier
) -> None:
    body = b'{"not json'
    path = f"/v1/events/{carrier.name}"
    answer = await client.post(path, content=body, headers=signed(carrier, body))
    assert (answer.status_code, answer.json()["code"]) == (400, "malformed_json")
    unsigned = await client.post(path, content=body, headers=JSON)
    assert (unsigned.status_code, unsigned.json()["code"]) == (401, "signature_missing")


async def test_each_source_is_labelled_with_its_adapter(client: httpx.AsyncClient) -> None:
    found = await samples(client)
    for carrier in CARRIERS:
        adapter = str(carrier.config["adapter"])
        labels = {"source": carrier.name, "adapter": adapter}
        assert value(found, "gateway_source_adapter_info", **labels) == 1, carrier.name
