"""Every process speaks one log format: JSON lines with bound context."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    """
    import logging, structlog
    from shared.logging import configure_logging
    configure_logging("INFO", "json", process="api")
    structlog.contextvars.bind_contextvars(request_id="req-42")
    structlog.get_logger().info("event.accepted", source="acme", idempotency_key="acme:e1")
    structlog.get_logger().debug("filtered.out")
    logging.getLogger("arq.worker").warning("stdlib %s", "line", extra={"color_message": "x"})
    try:
        1 / 0
    except ZeroDivisionError:
        structlog.get_logger().exception("job.crashed")

    import asyncio

    async def in_a_loop():
        for n in range(3):
            structlog.get_logger().info("loop.line", n=n)
        logging.getLogger("uvicorn.error").info("stdlib in loop")

    asyncio.run(in_a_loop())
    structlog.get_logger().info("after.loop")
    """
)


def run_program() -> list[dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, timeout=60
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_structlog_lines_are_json_with_bound_context_and_process() -> None:
    accepted = run_program()[0]
    assert accepted["event"] == "event.accepted"
    assert accepted["request_id"] == "req-42"
    assert accepted["process"] == "api"
    assert accepted["level"] == "info"
    assert accepted["source"] == "acme"
    assert str(accepted["timestamp"]).endswith("Z")


def test_lines_below_the_level_are_dropped() -> None:
    assert all(line["event"] != "filtered.out" for line in run_program())


def test_standard_library_loggers_share_the_json_format() -> None:
    stdlib = run_program()[1]
    assert stdlib["event"] == "stdlib line"
    assert stdlib["level"] == "warning"
    assert stdlib["request_id"] == "req-42"
    assert "color_message" not in stdlib


def test_exceptions_are_rendered_into_the_line() -> None:
    crashed = run_program()[2]
    assert crashed["event"] == "job.crashed"
    assert crashed["level"] == "error"
    assert "ZeroDivisionError" in str(crashed["exception"])


def test_lines_batched_inside_an_event_loop_keep_their_order_and_are_all_written() -> None:
    events = [line["event"] for line in run_program()[3:]]
    assert events == ["loop.line", "loop.line", "loop.line", "stdlib in loop", "after.loop"]


def test_timestamps_are_utc_iso_8601_with_microseconds() -> None:
    for line in run_program():
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", str(line["timestamp"]))
