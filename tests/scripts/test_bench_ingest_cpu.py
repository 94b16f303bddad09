"""The in-process CPU harness (``scripts/proof/bench/ingest/cpu.py``) measures real answers.

Every request it sends is answered through uvicorn's own HTTP protocol, and
every 202 it counts from the gateway app is a job in Redis. No timed
assertions: only that a figure is produced.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from arq.connections import ArqRedis

from gateway_api.app import create_app
from scripts.proof.bench.apps import create_bare_app
from scripts.proof.bench.ingest.cpu import measure, signed_requests
from scripts.proof.bench.ingest.model import QUEUE_NAME, SOURCE
from scripts.proof.bench.ingest.wrk import RouteRequests
from shared.adapters.config import parse_source_config
from shared.settings import Settings


# The bare app is the benchmark's floor exactly as measured, inferred path parameter included.
@pytest.mark.filterwarnings("ignore:.*deprecated inferred style:DeprecationWarning")
async def test_harness_answers_every_request_to_the_bare_endpoint() -> None:
    raw = signed_requests(25, "bare", RouteRequests("standard"))

    cpu_us, statuses = await measure(create_bare_app(), raw, connections=10, profile=None)

    assert statuses == {b"202": 25}
    assert cpu_us > 0


async def test_every_ingest_answer_the_harness_counts_is_a_queued_job(
    redis: ArqRedis, make_settings: Callable[..., Settings]
) -> None:
    route = RouteRequests("standard")
    settings = make_settings(
        queue_name=QUEUE_NAME, sources={SOURCE: parse_source_config(SOURCE, route.source)}
    )
    raw = signed_requests(25, "ingest", route)

    cpu_us, statuses = await measure(create_app(settings), raw, connections=10, profile=None)

    assert statuses == {b"202": 25}
    assert await redis.zcard(QUEUE_NAME) == 25
    assert cpu_us > 0
