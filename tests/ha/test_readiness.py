"""Readiness reports the topology it sees (docs/contract.md §4.5)."""

from __future__ import annotations

from collections.abc import Callable

from gateway_api.app import create_app
from scripts.harness.sentinel import SentinelTopology
from shared.settings import Settings
from tests.api.harness import asgi_client, running


async def test_readiness_names_the_sentinel_primary_and_its_replica(
    topology: SentinelTopology, ha_settings: Callable[..., Settings]
) -> None:
    app = create_app(ha_settings())
    async with running(app), asgi_client(app) as client:
        response = await client.get("/health/ready")

    assert response.status_code == 200, response.text
    redis = response.json()["checks"]["redis"]
    assert redis["topology"] == {
        "mode": "sentinel",
        "primary": f"127.0.0.1:{topology.primary().port}",
        "replicas": 1,
    }
    assert response.json()["checks"]["mongo"]["topology"]["mode"] in ("standalone", "replica_set")
