"""``gateway loadtest``: its command line and the summary it prints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from scripts.proof.loadtest.options import (
    LoadTestError,
    LoadTestOptions,
)
from scripts.proof.loadtest.report import (
    Criterion,
    Report,
    Thresholds,
)
from scripts.proof.loadtest.run import run_loadtest
from scripts.proof.options import (
    drain_timeout_option,
    mongo_url_option,
    output_option,
    seed_option,
)

__all__ = ["loadtest_command"]

# ---------------------------------------------------------------- the command


def _print_summary(report: Report, output: Path, console: Console) -> None:
    verdict = "[green]PASS[/green]" if report.passed else "[bold red]MISS[/bold red]"
    console.print(f"Load test: {verdict}")
    for criterion in report.criteria:
        console.print(
            f"  {_verdict(criterion)}  {criterion.id} {criterion.title}: {criterion.measured}"
            f"  [dim](target: {criterion.target})[/dim]",
            soft_wrap=True,
        )
    console.print(f"report: {output / 'report.md'} (also report.json, locust.html)", soft_wrap=True)


def _verdict(criterion: Criterion) -> str:
    return "[green]PASS[/green]" if criterion.passed else "[bold red]MISS[/bold red]"


@click.command("loadtest")
@click.option("--users", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option(
    "--duration", "duration_s", type=click.IntRange(1), default=60, show_default=True,
    help="Seconds of load.",
)  # fmt: skip
@click.option(
    "--rate",
    "rate_per_s",
    type=click.FloatRange(0),
    default=40.0,
    show_default=True,
    help="Target requests/s of all users together (0: as fast as answers come).",
)
@click.option("--spawn-rate", type=click.FloatRange(0, min_open=True), help="Users started per s.")
@output_option(Path("loadtest-report"))
@click.option("--target", help="Base URL of a running gateway (default: start one here).")
@click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True)
@click.option(
    "--transient-rate",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Share of downstream deliveries the mock answers 503.",
)
@seed_option("Seed of traffic and failures.")
@click.option("--duplicate-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--out-of-order-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@drain_timeout_option(0)
@click.option(
    "--max-p95-ms", type=click.FloatRange(0, min_open=True), default=100.0, show_default=True
)
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--min-recovery", type=click.FloatRange(0, 1), default=0.99, show_default=True)
@mongo_url_option("MongoDB to use / to check.", envvar="GATEWAY_MONGO_URL")
@click.option("--mongo-db", envvar="GATEWAY_MONGO_DB", default="gateway", show_default=True)
@click.option("--redis-url", envvar="GATEWAY_REDIS_URL", help="Redis to use / to watch.")
@click.option(
    "--mock-url",
    envvar="GATEWAY_MOCK_DOWNSTREAM_URL",
    help="With --target: the running mock downstream's base URL.",
)
@click.option(
    "--source",
    help="Sources to spread the load over, comma-separated (default: every configured one).",
)
@click.option(
    "--py-spy",
    "py_spy",
    type=click.Path(exists=True, dir_okay=False),
    help="py-spy binary: profile the API, worker-1 and the embedded MongoDB during the load.",
)
def loadtest_command(
    max_p95_ms: float, max_error_rate: float, min_recovery: float, **params: Any
) -> None:
    """Load the gateway with Locust and judge the run (exit 1 on any miss).

    The thresholds are those of docs/contract.md §6.

    Without --target it starts the whole stack here (mock downstream failing
    transiently --transient-rate of the time); with --target it loads a running
    stack, reading its GATEWAY_* variables (source the stack.env of `gateway dev`).
    """
    for name in ("mongo_url", "redis_url", "mock_url"):
        params[name] = params[name] or None  # an empty variable is not set
    thresholds = Thresholds(
        max_p95_ms=max_p95_ms, max_error_rate=max_error_rate, min_recovery_ratio=min_recovery
    )
    options = LoadTestOptions(thresholds=thresholds, **params)
    console = Console(stderr=True)
    try:
        report = run_loadtest(options, console)
    except LoadTestError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_summary(report, options.output, Console())
    if not report.passed:
        sys.exit(1)
