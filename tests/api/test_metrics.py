"""GET /metrics: the API series of docs/contract.md §3.2, one registry per app, bounded labels."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway_api.app import create_app
from shared.settings import Settings
from tests.factories import JSON, event_body, reference_headers


async def samples(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_ingest_outcomes_are_counted_by_source(client: httpx.AsyncClient) -> None:
    body = event_body()
    await client.post("/v1/events/acme", content=body, headers=reference_headers(body))
    await client.post("/v1/events/acme", content=body, headers=reference_headers(body))
    await client.post("/v1/events/acme", content=body, headers=JSON)
    await client.post("/v1/events/who-knows", content=body, headers=reference_headers(body))

    found = await samples(client)

    assert value(found, "gateway_events_accepted_total", source="acme") == 1
    assert value(found, "gateway_events_duplicate_total", source="acme", stage="api") == 1
    assert (
        value(found, "gateway_signature_failures_total", source="acme", code="signature_missing")
        == 1
    )
    assert (
        value(found, "gateway_signature_failures_total", source="_unknown", code="unknown_source")
        == 1
    )
    assert (
        value(found, "gateway_events_rejected_total", source="_unknown", code="unknown_source") == 1
    )
    assert value(found, "gateway_enqueue_duration_seconds_count") == 2


async def test_http_requests_are_counted_by_route_template_not_raw_path(
    client: httpx.AsyncClient,
) -> None:
    for source in ("acme", "a1", "a2", "a3"):
        await client.post(f"/v1/events/{source}", content=b"{}", headers=JSON)
    await client.get("/no/such/path")
    await client.get("/another/missing/path")

    found = await samples(client)

    route = "/v1/events/{source}"
    assert (
        value(found, "gateway_http_requests_total", route=route, method="POST", status="401") == 4
    )
    assert (
        value(found, "gateway_http_request_duration_seconds_count", route=route, method="POST") == 4
    )
    assert (
        value(found, "gateway_http_requests_total", route="_unmatched", method="GET", status="404")
        == 2
    )
    assert not any("a1" in dict(labels).get("route", "") for _, labels in found)


async def test_unusual_methods_share_one_label(client: httpx.AsyncClient) -> None:
    await client.request("PROPFIND", "/v1/events/acme")
    found = await samples(client)
    assert (
        value(
            found, "gateway_http_requests_total", route="_unmatched", method="OTHER", status="405"
        )
        == 1
    )


async def test_each_app_has_its_own_registry(settings: Settings) -> None:
    first, second = create_app(settings), create_app(settings)
    first_metrics = first.state.resources.metrics
    second_metrics = second.state.resources.metrics
    first_metrics.accepted("acme")
    name, labels = "gateway_events_accepted_total", {"source": "acme"}
    assert first_metrics.registry.get_sample_value(name, labels) == 1
    assert second_metrics.registry.get_sample_value(name, labels) == 0


async def test_openmetrics_is_served_when_asked_for(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
