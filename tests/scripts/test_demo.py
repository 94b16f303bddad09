"""`gateway demo` drives a real stack through every scenario and sees each outcome."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from scripts.commands.cli import main
from scripts.devstack.stack import Stack, StackOptions
from scripts.harness.services import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    options = StackOptions(
        port=free_port(),
        workers=2,
        mock_downstream=True,
        workdir=workdir,
        log_dir=workdir / "logs",
        env={"GATEWAY_BACKOFF_BASE_S": "0.1", "GATEWAY_WORKER_POLL_DELAY_S": "0.05"},
        shutdown_grace_s=2,
    )
    running = Stack(options)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def stack_env(stack: Stack) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in stack.env_file.read_text().splitlines():
        name, _, value = line.partition("=")
        env[name] = value.strip("'")
    return env


def test_demo_reports_every_scenario_as_expected(stack: Stack) -> None:
    result = CliRunner().invoke(main, ["demo", "--timeout", "60"], env=stack_env(stack))
    assert result.exit_code == 0, result.output
    for scenario in (
        "new event",
        "same event again",
        "out of order",
        "forged signature",
        "invalid event",
        "downstream 503",
        "order_id mismatch",
    ):
        assert scenario in result.output
    assert "NO" not in result.output


def test_stack_env_file_is_private(stack: Stack) -> None:
    assert Path(stack.env_file).stat().st_mode & 0o077 == 0
    assert Path(stack.sources_file).stat().st_mode & 0o077 == 0
