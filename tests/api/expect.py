"""What the API tests share: signed ingest requests, problem answers and queued jobs."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from gateway_api.problems import problem_type
from shared.contracts import ProblemCode, QueuedEvent
from shared.queue import JOB_FUNCTION, deserialize
from tests.factories import event_body, hex_headers, new_event_id, reference_headers


async def post_event(
    client: httpx.AsyncClient, body: bytes, source: str = "acme"
) -> httpx.Response:
    """POST ``body`` to ``source``'s ingest route, signed as that source's courier signs.

    ``acme``: Standard Webhooks headers from the reference package; ``legacy``: ``X-Signature``.
    """
    headers = hex_headers(body) if source == "legacy" else reference_headers(body)
    return await client.post(f"/v1/events/{source}", content=body, headers=headers)


async def post_new_event(
    client: httpx.AsyncClient, source: str = "acme"
) -> tuple[str, bytes, httpx.Response]:
    """POST a new valid event with :func:`post_event`; its event id, its body and the answer."""
    event_id = new_event_id()
    body = event_body(event_id)
    return event_id, body, await post_event(client, body, source)


async def get_json(client: httpx.AsyncClient, path: str, status: int = 200, **options: Any) -> Any:
    """GET ``path`` (``options`` as for ``client.get``); it must answer ``status``. Its JSON."""
    response = await client.get(path, **options)
    assert response.status_code == status, response.text
    return response.json()


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with this status and code; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == problem_type(ProblemCode(code))
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def assert_bad_request(response: httpx.Response, message: str) -> None:
    """``response`` is a 400 ``bad_request`` problem whose detail says ``message``."""
    assert message in assert_problem(response, 400, "bad_request")["detail"]


async def queued_job(redis: ArqRedis, key: str) -> QueuedEvent:
    """The job stored under ``key``, decoded from arq's MessagePack job format."""
    raw = await redis.get(job_key_prefix + key)
    assert raw is not None, f"no job stored for {key}"
    job = deserialize(raw)
    assert job["f"] == JOB_FUNCTION
    return msgspec.convert(job["a"][0], QueuedEvent)
