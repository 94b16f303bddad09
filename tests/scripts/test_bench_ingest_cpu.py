"""The in-process CPU harness (``scripts/proof/bench/ingest/cpu.py``) measures real answers.

Every request it sends is answered through uvicorn's own HTTP protocol, and
every 202 it counts from the gateway app is a job in Redis. No timed
assertions: only that a figure is produced.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from arq.connections import ArqRedis
from click.testing import CliRunner

from gateway_api.app import create_app
from scripts.proof.bench.apps import create_bare_app
from scripts.proof.bench.ingest.cpu import cpu_command, measure, signed_requests
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


@pytest.mark.filterwarnings("ignore:.*deprecated inferred style:DeprecationWarning")
def test_command_reports_each_target_and_each_feature_switched_off() -> None:
    result = CliRunner().invoke(
        cpu_command,
        ["--requests", "20", "--rounds", "1", "--connections", "5",
         "--without", "log", "--without", "metrics", "--without", "context"],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    reported = [line.split(":")[0].split()[-1] for line in result.output.splitlines()]
    assert {"bare", "ingest", "ingest-no-log", "ingest-no-metrics", "ingest-no-context"} <= set(
        reported
    )
    assert "ingest ÷ bare" in result.output
