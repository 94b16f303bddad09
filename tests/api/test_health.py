"""GET /health/live and /health/ready (docs/contract.md §3.2)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from scripts.harness.services import free_port
from tests.api.expect import get_json
from tests.plugins.servers import let_unreachable_mongo_monitor_sleep


async def test_liveness_is_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readiness_reports_both_dependencies_with_latency(
    client: httpx.AsyncClient,
) -> None:
    body = await get_json(client, "/health/ready")
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"redis", "mongo"}
    for check in body["checks"].values():
        assert check["ok"] is True
        assert check["latency_ms"] >= 0
        assert "error" not in check


async def test_readiness_is_503_naming_mongo_without_revealing_its_password(
    client_for: Callable[..., Awaitable[httpx.AsyncClient]],
) -> None:
    closed_port = free_port()
    client = await client_for(
        mongo_url=f"mongodb://gateway:s3cret-pw@127.0.0.1:{closed_port}/?directConnection=true"
    )

    response = await client.get("/health/ready")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["ok"] is True
    mongo = body["checks"]["mongo"]
    assert mongo["ok"] is False
    assert mongo["error"]
    assert "s3cret-pw" not in response.text
    await let_unreachable_mongo_monitor_sleep()  # before client_for closes the app


async def test_health_answers_carry_a_request_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready", headers={"X-Request-ID": "lb-probe-1"})
    assert response.headers["x-request-id"] == "lb-probe-1"
