"""POST /v1/events/{source}: the answers a courier gets when its event is good.

The contract is docs/contract.md §3.1.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import time

import httpx
import msgspec
import pytest
import structlog
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from shared.contracts import EventType
from shared.queue import serialize
from shared.settings import Settings
from shared.signing import generate_secret
from tests.api.expect import assert_problem, post_event, post_new_event, queued_job
from tests.factories import (
    JSON,
    TEST_SECRETS,
    event_body,
    event_payload,
    hex_headers,
    new_event_id,
    reference_headers,
    reference_signature,
)


async def test_event_signed_by_the_reference_library_is_accepted_and_queued(
    client: httpx.AsyncClient, redis: ArqRedis, settings: Settings
) -> None:
    event_id, _, response = await post_new_event(client)

    assert response.status_code == 202
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer == {
        "status": "accepted",
        "idempotency_key": f"acme:{event_id}",
        "request_id": response.headers["x-request-id"],
    }
    job = await queued_job(redis, f"acme:{event_id}")
    assert job.idempotency_key == f"acme:{event_id}"
    assert job.source == "acme"
    assert job.request_id == answer["request_id"]
    assert job.event.event_id == event_id
    assert job.event.event_type is EventType.PICKED_UP
    assert job.event.shipment.id == "shp_123"
    assert msgspec.json.decode(job.event.data) == event_payload(event_id)["data"]
    assert abs(job.received_at_ms - time.time() * 1000) < 60_000
    assert await redis.zscore(settings.queue_name, f"acme:{event_id}") is not None


async def test_event_signed_with_the_second_active_secret_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    body = event_body()
    response = await client.post(
        "/v1/events/acme", content=body, headers=reference_headers(body, TEST_SECRETS[1])
    )
    assert response.status_code == 202


async def test_two_signatures_in_one_header_pass_during_rotation(
    client: httpx.AsyncClient,
) -> None:
    body = event_body()
    headers = reference_headers(body, TEST_SECRETS[1])
    old = reference_signature(
        body,
        TEST_SECRETS[0],
        msg_id=headers["webhook-id"],
        timestamp=int(headers["webhook-timestamp"]),
    )
    headers["webhook-signature"] = f"{old} {headers['webhook-signature']}"

    response = await client.post("/v1/events/acme", content=body, headers=headers)

    assert response.status_code == 202


async def test_rotation_header_with_one_unknown_and_one_valid_signature_passes(
    client: httpx.AsyncClient,
) -> None:
    body = event_body()
    headers = reference_headers(body)
    headers["webhook-signature"] = (
        f"v1,c2lnbmVkIGJ5IGEgcmV0aXJlZCBrZXk= v2,whatever {headers['webhook-signature']}"
    )
    response = await client.post("/v1/events/acme", content=body, headers=headers)
    assert response.status_code == 202


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON ;charset=UTF-8"],
)
async def test_json_content_type_with_parameters_or_any_case_is_accepted(
    client: httpx.AsyncClient, content_type: str
) -> None:
    body = event_body()
    headers = {**reference_headers(body), "content-type": content_type}
    response = await client.post("/v1/events/acme", content=body, headers=headers)
    assert response.status_code == 202


async def test_unknown_top_level_fields_are_ignored(client: httpx.AsyncClient) -> None:
    body = json.dumps({**event_payload(), "courier_extension": {"x": 1}}).encode()
    response = await post_event(client, body)
    assert response.status_code == 202


async def test_resubmission_of_a_queued_event_is_a_200_duplicate(
    client: httpx.AsyncClient, redis: ArqRedis, settings: Settings
) -> None:
    event_id, body, first = await post_new_event(client)
    # A courier retry: same event, new delivery attempt (new webhook-id and timestamp).
    second = await post_event(client, body)

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json() == {
        "status": "duplicate",
        "idempotency_key": f"acme:{event_id}",
        "request_id": second.headers["x-request-id"],
    }
    assert await redis.zcard(settings.queue_name) == 1


async def test_resubmission_is_a_duplicate_while_the_finished_job_result_is_kept(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    event_id = new_event_id()
    # What arq leaves when a job finished: no job key, a result key (kept keep_result_s).
    await redis.set(result_key_prefix + f"acme:{event_id}", serialize({"s": True}), ex=60)
    body = event_body(event_id)

    response = await post_event(client, body)

    assert response.status_code == 200
    assert response.json()["status"] == "duplicate"
    assert await redis.get(job_key_prefix + f"acme:{event_id}") is None


async def test_resubmission_after_the_kept_result_window_is_accepted_again(
    client: httpx.AsyncClient, redis: ArqRedis, settings: Settings
) -> None:
    event_id, body, first = await post_new_event(client)
    assert first.status_code == 202
    # The job ran and its result expired: arq no longer knows the key.
    await redis.delete(job_key_prefix + f"acme:{event_id}")
    await redis.zrem(settings.queue_name, f"acme:{event_id}")

    again = await post_event(client, body)

    assert again.status_code == 202


async def test_same_event_id_from_two_sources_is_two_events(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    event_id, body, acme = await post_new_event(client)
    legacy = await post_event(client, body, "legacy")
    assert (acme.status_code, legacy.status_code) == (202, 202)
    assert legacy.json()["idempotency_key"] == f"legacy:{event_id}"
    assert (await queued_job(redis, f"legacy:{event_id}")).source == "legacy"


async def test_hundred_concurrent_identical_submissions_get_exactly_one_202(
    client: httpx.AsyncClient, redis: ArqRedis, settings: Settings
) -> None:
    event_id = new_event_id()
    body = event_body(event_id)
    headers = reference_headers(body)

    responses = await asyncio.gather(
        *(client.post("/v1/events/acme", content=body, headers=headers) for _ in range(100))
    )

    statuses = [r.status_code for r in responses]
    assert statuses.count(202) == 1
    assert statuses.count(200) == 99
    assert {r.json()["status"] for r in responses if r.status_code == 200} == {"duplicate"}
    assert await redis.zcard(settings.queue_name) == 1


async def test_queued_job_is_msgpack_not_pickle(client: httpx.AsyncClient, redis: ArqRedis) -> None:
    event_id, _, _ = await post_new_event(client)

    raw = await redis.get(job_key_prefix + f"acme:{event_id}")

    assert raw is not None
    assert not raw.startswith(b"\x80")  # every pickle protocol >= 2 starts with PROTO
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(raw)  # noqa: S301 - proving the job is not a pickle
    assert (await queued_job(redis, f"acme:{event_id}")).event.event_id == event_id


async def test_hex_source_accepts_a_hex_signature(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    event_id, _, response = await post_new_event(client, "legacy")
    assert response.status_code == 202
    assert (await queued_job(redis, f"legacy:{event_id}")).source == "legacy"


async def test_hex_source_rejects_a_standard_webhooks_signature(
    client: httpx.AsyncClient,
) -> None:
    body = event_body()
    response = await client.post("/v1/events/legacy", content=body, headers=reference_headers(body))
    assert_problem(response, 401, "signature_missing")


async def test_standard_source_rejects_a_hex_signature(client: httpx.AsyncClient) -> None:
    body = event_body()
    response = await client.post("/v1/events/acme", content=body, headers=hex_headers(body))
    assert_problem(response, 401, "signature_missing")


async def test_sane_request_id_is_echoed_and_travels_with_the_job(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    event_id = new_event_id()
    body = event_body(event_id)
    headers = {**reference_headers(body), "X-Request-ID": "courier-7f3a:retry.2"}

    response = await client.post("/v1/events/acme", content=body, headers=headers)

    assert response.headers["x-request-id"] == "courier-7f3a:retry.2"
    assert response.json()["request_id"] == "courier-7f3a:retry.2"
    assert (await queued_job(redis, f"acme:{event_id}")).request_id == "courier-7f3a:retry.2"


@pytest.mark.parametrize("offered", ["has spaces", "x" * 129, "semi;colon", "ünïcode"])
async def test_unsafe_request_id_is_replaced_by_a_generated_one(
    client: httpx.AsyncClient, offered: str
) -> None:
    body = event_body()
    headers = [(k.encode(), v.encode()) for k, v in reference_headers(body).items()]
    headers.append((b"x-request-id", offered.encode()))
    response = await client.post("/v1/events/acme", content=body, headers=headers)
    request_id = response.headers["x-request-id"]
    assert request_id != offered
    assert len(request_id) == 32
    assert response.json()["request_id"] == request_id


async def test_each_request_gets_its_own_request_id(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/health/live")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


async def test_duplicate_and_rejection_are_logged_without_body_or_secret(
    client: httpx.AsyncClient,
) -> None:
    event_id = new_event_id()
    body = event_body(event_id, data={"note": "private-customer-note"})
    await post_event(client, body)
    with capture_logs() as logs:
        duplicate = await client.post(
            "/v1/events/acme", content=body, headers=reference_headers(body)
        )
        rejected = await client.post(
            "/v1/events/acme", content=body, headers=reference_headers(body, generate_secret())
        )

    events = [entry for entry in logs if entry["event"] in {"event.duplicate", "event.rejected"}]
    assert events == [
        {
            "event": "event.duplicate",
            "log_level": "info",
            "source": "acme",
            "idempotency_key": f"acme:{event_id}",
        },
        {
            "event": "event.rejected",
            "log_level": "info",
            "source": "acme",
            "code": "signature_invalid",
        },
    ]
    assert (duplicate.status_code, rejected.status_code) == (200, 401)
    text = repr(logs)
    assert "private-customer-note" not in text
    assert all(secret not in text for secret in TEST_SECRETS)


async def test_request_id_is_bound_in_the_log_context_during_the_request(
    client: httpx.AsyncClient,
) -> None:
    with capture_logs(processors=[merge_contextvars]) as logs:
        response = await client.post("/v1/events/acme", content=b"{", headers=JSON)
    rejected = [entry for entry in logs if entry["event"] == "event.rejected"]
    assert rejected[0]["request_id"] == response.headers["x-request-id"]
    # ... and only during it: the binding is reset when the answer is complete.
    assert "request_id" not in structlog.contextvars.get_contextvars()
