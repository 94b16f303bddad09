"""``gateway loadtest``: its command line and the summary it prints."""

from __future__ import annotations

import sys
from pathlib import Path

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
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("loadtest-report"),
    show_default=True,
)
@click.option("--target", help="Base URL of a running gateway (default: start one here).")
@click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True)
@click.option(
    "--transient-rate",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Share of downstream deliveries the mock answers 503.",
)
@click.option(
    "--seed", type=int, default=1, show_default=True, help="Seed of traffic and failures."
)
@click.option("--duplicate-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--out-of-order-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option(
    "--drain-timeout", "drain_timeout_s", type=click.FloatRange(0), default=300.0, show_default=True
)
@click.option(
    "--max-p95-ms", type=click.FloatRange(0, min_open=True), default=100.0, show_default=True
)
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--min-recovery", type=click.FloatRange(0, 1), default=0.99, show_default=True)
@click.option("--mongo-url", envvar="GATEWAY_MONGO_URL", help="MongoDB to use / to check.")
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
    users: int,
    duration_s: int,
    rate_per_s: float,
    spawn_rate: float | None,
    output: Path,
    target: str | None,
    workers: int,
    transient_rate: float,
    seed: int,
    duplicate_ratio: float,
    out_of_order_ratio: float,
    drain_timeout_s: float,
    max_p95_ms: float,
    max_error_rate: float,
    min_recovery: float,
    mongo_url: str | None,
    mongo_db: str,
    redis_url: str | None,
    mock_url: str | None,
    source: str | None,
    py_spy: str | None,
) -> None:
    """Load the gateway with Locust and judge the run against SPEC §6 (exit 1 on any miss).

    Without --target it starts the whole stack here (mock downstream failing
    transiently --transient-rate of the time); with --target it loads a running
    stack, reading its GATEWAY_* variables (source the stack.env of `gateway dev`).
    """
    options = LoadTestOptions(
        users=users,
        duration_s=duration_s,
        rate_per_s=rate_per_s,
        spawn_rate=spawn_rate,
        output=output,
        target=target,
        workers=workers,
        transient_rate=transient_rate,
        seed=seed,
        duplicate_ratio=duplicate_ratio,
        out_of_order_ratio=out_of_order_ratio,
        drain_timeout_s=drain_timeout_s,
        thresholds=Thresholds(
            max_p95_ms=max_p95_ms, max_error_rate=max_error_rate, min_recovery_ratio=min_recovery
        ),
        mongo_url=mongo_url or None,
        mongo_db=mongo_db,
        redis_url=redis_url or None,
        mock_url=mock_url or None,
        source=source,
        py_spy=py_spy,
    )
    console = Console(stderr=True)
    try:
        report = run_loadtest(options, console)
    except LoadTestError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_summary(report, output, Console())
    if not report.passed:
        sys.exit(1)
