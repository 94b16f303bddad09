"""Assertions shared by the API tests: problem answers and queued jobs."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from gateway_api.problems import problem_type
from shared.contracts import ProblemCode, QueuedEvent
from shared.queue import JOB_FUNCTION, deserialize


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
