"""``gateway chaos``: its command line, one option per
:class:`~scripts.proof.chaos.plan.ChaosOptions` field."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import click

from scripts.devstack.stack import redis_topology_option
from scripts.harness.services import ServiceError
from scripts.harness.tcp_proxy import OutageMode
from scripts.proof.chaos.plan import (
    ChaosOptions,
    plan_faults,
)
from scripts.proof.chaos.run import run_chaos

__all__ = ["chaos_command"]


@click.command("chaos")
@click.option(
    "--duration",
    type=click.FloatRange(10),
    default=180.0,
    show_default=True,
    help="Seconds of load.",
)
@click.option(
    "--rate", type=click.FloatRange(1), default=25.0, show_default=True, help="Events per second."
)
@click.option("--workers", type=click.IntRange(2, 16), default=2, show_default=True)
@click.option(
    "--seed", type=int, default=1, show_default=True, help="Seed of the schedule and the load."
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/chaos"),
    show_default=True,
)
@click.option(
    "--outage",
    type=click.FloatRange(1),
    default=30.0,
    show_default=True,
    help="Seconds of each MongoDB and downstream outage.",
)
@click.option(
    "--redis-down",
    type=click.FloatRange(0),
    default=3.0,
    show_default=True,
    help="Seconds Redis stays down when restarted.",
)
@click.option("--drain-timeout", type=click.FloatRange(1), default=300.0, show_default=True)
@click.option(
    "--mongo-outage-mode",
    type=click.Choice([m.value for m in OutageMode]),
    default=OutageMode.DROP.value,
    show_default=True,
    help="drop: connections reset and refused; blackhole: connections hang.",
)
@click.option(
    "--redis-crash", is_flag=True, help="Also SIGKILL Redis (runs it with appendfsync always)."
)
@redis_topology_option  # sentinel also adds the redis_primary_kill fault
@click.option("--mongo-url", help="A MongoDB to use instead of the embedded one (single host).")
@click.option("--mongo-db", help="Database name (default: a fresh chaos_<hex>).")
@click.option("--port", type=int, help="API port (default: a free one).")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="GATEWAY_NAME=VALUE",
    help="Override a gateway setting of the run (repeatable).",
)
@click.option("--downstream-latency-ms", type=click.FloatRange(0), default=100.0, show_default=True)
def chaos_command(
    duration: float,
    rate: float,
    workers: int,
    seed: int,
    output: Path,
    outage: float,
    redis_down: float,
    drain_timeout: float,
    mongo_outage_mode: str,
    redis_crash: bool,
    redis_topology: str,
    mongo_url: str | None,
    mongo_db: str | None,
    port: int | None,
    downstream_latency_ms: float,
    settings: tuple[str, ...],
) -> None:
    """Run the gateway under load, inject faults, and check that nothing accepted is lost."""
    gateway_env: dict[str, str] = {}
    for setting in settings:
        name, equals, value = setting.partition("=")
        if not equals or not name.startswith("GATEWAY_"):
            raise click.BadParameter(f"{setting!r} is not GATEWAY_NAME=VALUE", param_hint="--set")
        gateway_env[name] = value
    options = ChaosOptions(
        gateway_env=gateway_env,
        duration_s=duration,
        rate=rate,
        workers=workers,
        seed=seed,
        output=output,
        outage_s=outage,
        redis_down_s=redis_down,
        drain_timeout_s=drain_timeout,
        mongo_outage_mode=OutageMode(mongo_outage_mode),
        redis_crash=redis_crash,
        redis_topology=redis_topology,
        mongo_url=mongo_url,
        port=port,
        downstream_latency_ms=downstream_latency_ms,
        mongo_db=mongo_db or f"chaos_{uuid.uuid4().hex[:8]}",
    )
    try:
        plan_faults(options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--duration") from exc
    try:
        report = run_chaos(options)
    except ServiceError as exc:
        raise click.ClickException(f"the stack did not start: {exc}") from exc
    for inv in report.invariants:
        click.echo(f"{'PASS' if inv.passed else 'FAIL'} {inv.name}: {inv.summary}")
    for fault in report.faults:
        recovery = ", ".join(
            f"{k} {'—' if v is None else f'{v:g} s'}" for k, v in fault.recovery.items()
        )
        click.echo(f"fault {fault.kind.value} ({fault.target}): {recovery}")
    click.echo(f"{'PASS' if report.passed else 'FAIL'} — report in {output / 'report.md'}")
    if not report.passed:
        sys.exit(1)


if __name__ == "__main__":
    chaos_command()
