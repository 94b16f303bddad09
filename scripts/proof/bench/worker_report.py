"""``gateway bench-worker``'s results as ``bench-worker.md`` and as the table it prints."""

from __future__ import annotations

from typing import Any

from msgspec import Struct
from rich.console import Console
from rich.table import Table

from scripts.proof.markdown import table

__all__ = ["BenchWorkerReport", "RoundResult", "RoundTrips", "render_console", "render_markdown"]


class RoundResult(Struct, frozen=True, kw_only=True):
    """One configuration: N worker processes draining a pre-filled queue."""

    workers: int
    events: int
    drain_s: float
    events_per_s: float
    events_per_s_per_worker: float
    worker_cpu_ms_per_event: float
    """CPU of all worker processes together, per event."""
    worker_cpu_pct: float
    """CPU of all worker processes together during the drain (100 = one core)."""
    store_cpu_ms_per_event: float | None
    store_cpu_pct: float | None
    """The embedded store's process (``None`` for a MongoDB not started here)."""
    redis_cpu_pct: float


class RoundTrips(Struct, frozen=True, kw_only=True):
    """MongoDB commands per event on the happy path, from PyMongo command monitoring."""

    sample: int
    per_event: float
    max_per_event: int
    by_command: dict[str, int]


class BenchWorkerReport(Struct, kw_only=True):
    """``bench-worker.json``."""

    started_at: str
    command: str
    store: str
    events: int
    concurrency: int
    poll_delay_s: float
    rounds: list[RoundResult]
    round_trips: RoundTrips
    machine: dict[str, Any]


def render_markdown(report: BenchWorkerReport) -> str:
    """``bench-worker.md``: the capacity table and the round-trip count."""
    trips = report.round_trips
    lines = [
        "# Worker capacity",
        "",
        f"- started: {report.started_at}; command: `{report.command}`",
        f"- store: **{report.store}**",
        f"- {report.events} pre-queued events per configuration (shipment lifecycles, "
        f"mixed event types), worker concurrency {report.concurrency}, "
        f"poll delay {report.poll_delay_s:g} s, no downstream; "
        f"machine: {report.machine.get('cpus')} CPUs, Python {report.machine.get('python')}",
        "",
    ]
    headers = (
        "worker processes", "drain s", "events/s", "events/s per process",
        "worker CPU ms/event", "workers' CPU %", "store CPU ms/event", "store CPU %",
        "redis CPU %",
    )  # fmt: skip
    rows = []
    for r in report.rounds:
        store_ms = "n/a" if r.store_cpu_ms_per_event is None else f"{r.store_cpu_ms_per_event:g}"
        store_pct = "n/a" if r.store_cpu_pct is None else f"{r.store_cpu_pct:g}"
        measured = (r.drain_s, r.events_per_s, r.events_per_s_per_worker)
        cpu = (r.worker_cpu_ms_per_event, r.worker_cpu_pct)
        rows.append(
            (r.workers, *(f"{v:g}" for v in (*measured, *cpu)), store_ms, store_pct,
             f"{r.redis_cpu_pct:g}")
        )  # fmt: skip
    lines += table(headers, rows)
    lines += [
        "",
        "CPU % is of one core (100 = one core busy for the whole drain).",
        "",
        f"MongoDB round trips per event (happy path, PyMongo command monitoring, "
        f"{trips.sample} events run one by one through the worker's EventProcessor): "
        f"**{trips.per_event:g}** on average, at most {trips.max_per_event} "
        f"(target ≤ 3); by command: "
        + ", ".join(f"{name} {n}" for name, n in trips.by_command.items()),
    ]
    return "\n".join(lines) + "\n"


def render_console(report: BenchWorkerReport, console: Console) -> None:
    table = Table(title=f"Worker capacity — {report.store}")
    for column in ("workers", "events/s", "per process", "worker CPU ms/event", "store CPU %"):
        table.add_column(column, justify="right")
    for r in report.rounds:
        table.add_row(
            str(r.workers),
            f"{r.events_per_s:g}",
            f"{r.events_per_s_per_worker:g}",
            f"{r.worker_cpu_ms_per_event:g}",
            "n/a" if r.store_cpu_pct is None else f"{r.store_cpu_pct:g}",
        )
    console.print(table)
    console.print(
        f"MongoDB round trips per event: {report.round_trips.per_event:g} "
        f"(max {report.round_trips.max_per_event}, target ≤ 3)"
    )
