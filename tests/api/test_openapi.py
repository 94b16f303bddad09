"""OpenAPI at /schema/openapi.json and the docs UI at /schema (docs/contract.md §3.2)."""

from __future__ import annotations

import httpx

from tests.api.expect import get_json


async def test_openapi_documents_the_ingest_request_and_answers(
    client: httpx.AsyncClient,
) -> None:
    schema = await get_json(client, "/schema/openapi.json")

    operation = schema["paths"]["/v1/events/{source}"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"event_id", "event_type", "occurred_at", "shipment"}
    assert "shipment.delivered" in body["properties"]["event_type"]["enum"]
    assert body["properties"]["shipment"]["required"] == ["id", "order_id"]
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert {"webhook-id", "webhook-timestamp", "webhook-signature", "X-Signature"} <= headers
    assert {"200", "202", "400", "401", "413", "415", "422", "503"} <= set(operation["responses"])
    problem = operation["responses"]["422"]["content"]["application/problem+json"]
    assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert "errors" in schema["components"]["schemas"]["Problem"]["properties"]
    assert {"/health/live", "/health/ready", "/metrics"} <= set(schema["paths"])


async def test_docs_ui_is_served_at_schema(client: httpx.AsyncClient) -> None:
    response = await client.get("/schema")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
