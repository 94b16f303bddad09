"""``gateway chaos``: its command line, one option per
:class:`~scripts.proof.chaos.plan.ChaosOptions` field."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from scripts.devstack.stack import redis_topology_option
from scripts.harness.services import ServiceError
from scripts.harness.tcp_proxy import OutageMode
from scripts.proof.chaos.plan import ChaosOptions, plan_faults
from scripts.proof.chaos.run import run_chaos
from scripts.proof.options import (
    drain_timeout_option,
    mongo_url_option,
    output_option,
    seconds_option,
    seed_option,
)

__all__ = ["chaos_command"]


def _gateway_env(
    _ctx: click.Context, _param: click.Parameter, settings: tuple[str, ...]
) -> dict[str, str]:
    gateway_env: dict[str, str] = {}
    for setting in settings:
        name, equals, value = setting.partition("=")
        if not equals or not name.startswith("GATEWAY_"):
            raise click.BadParameter(f"{setting!r} is not GATEWAY_NAME=VALUE", param_hint="--set")
        gateway_env[name] = value
    return gateway_env


@click.command("chaos")
@seconds_option("--duration", dest="duration_s", minimum=10, default=180.0, help="Seconds of load.")
@click.option(
    "--rate", type=click.FloatRange(1), default=25.0, show_default=True, help="Events per second."
)
@click.option("--workers", type=click.IntRange(2, 16), default=2, show_default=True)
@seed_option("Seed of the schedule and the load.")
@output_option(Path("reports/chaos"))
@seconds_option(
    "--outage",
    dest="outage_s",
    minimum=1,
    default=30.0,
    help="Seconds of each MongoDB and downstream outage.",
)
@seconds_option(
    "--redis-down",
    dest="redis_down_s",
    minimum=0,
    default=3.0,
    help="Seconds Redis stays down when restarted.",
)
@drain_timeout_option(1)
@click.option(
    "--mongo-outage-mode",
    type=click.Choice([m.value for m in OutageMode]),
    default=OutageMode.DROP.value,
    show_default=True,
    callback=lambda _ctx, _param, value: OutageMode(value),
    help="drop: connections reset and refused; blackhole: connections hang.",
)
@click.option(
    "--redis-crash", is_flag=True, help="Also SIGKILL Redis (runs it with appendfsync always)."
)
@redis_topology_option  # sentinel also adds the redis_primary_kill fault
@mongo_url_option("A MongoDB to use instead of the embedded one (single host).")
@click.option("--mongo-db", help="Database name (default: a fresh chaos_<hex>).")
@click.option("--port", type=int, help="API port (default: a free one).")
@click.option(
    "--set",
    "gateway_env",
    multiple=True,
    metavar="GATEWAY_NAME=VALUE",
    callback=_gateway_env,
    help="Override a gateway setting of the run (repeatable).",
)
@click.option("--downstream-latency-ms", type=click.FloatRange(0), default=100.0, show_default=True)
def chaos_command(**params: Any) -> None:
    """Run the gateway under load, inject faults, and check that nothing accepted is lost."""
    if params["mongo_db"] is None:
        del params["mongo_db"]  # ChaosOptions draws a fresh name
    options = ChaosOptions(**params)
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
    click.echo(f"{'PASS' if report.passed else 'FAIL'} — report in {options.output / 'report.md'}")
    if not report.passed:
        sys.exit(1)


if __name__ == "__main__":
    chaos_command()
