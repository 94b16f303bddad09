"""``gateway bench-worker``'s results as ``bench-worker.md`` and as the table it prints."""

from __future__ import annotations

from typing import Any

from msgspec import Struct
from rich.console import Console
from rich.table import Table

from scripts.proof.markdown import table
from scripts.proof.probes import Profile

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
    redis_commands_per_event: float
    """Commands the workers sent to Redis per event (each command of a MULTI counts)."""
    redis_commands: dict[str, float]
    """The same by command name, most frequent first."""
    profile: Profile | None = None
    """py-spy's samples of its first worker (``--profile``)."""


class RoundTrips(Struct, frozen=True, kw_only=True):
    """MongoDB commands per event on the happy path, from PyMongo command monitoring."""

    sample: int
    batch: int
    """Events per batch, as the workers run them."""
    per_event: float
    max_per_event: float
    """The most of any one batch, per event of that batch."""
    by_command: dict[str, int]


class BenchWorkerReport(Struct, kw_only=True):
    """``bench-worker.json``."""

    started_at: str
    command: str
    store: str
    events: int
    concurrency: int
    poll_delay_s: float
    batch: int
    """The workers' ``GATEWAY_WORKER_BATCH``."""
    rounds: list[RoundResult]
    arq_floor: RoundResult
    """One worker process whose job does nothing, run by arq itself one job at a time
    (``scripts.proof.bench.worker_floor``, ``GATEWAY_WORKER_BATCH=1``)."""
    queue_floor: RoundResult
    """The same with the workers' batch size: the queue machinery the workers run on."""
    round_trips: RoundTrips
    machine: dict[str, Any]


def render_markdown(report: BenchWorkerReport) -> str:
    """``bench-worker.md``: the capacity table, the arq floor and the round-trip count."""
    trips = report.round_trips
    lines = [
        "# Worker capacity",
        "",
        f"- started: {report.started_at}; command: `{report.command}`",
        f"- store: **{report.store}**",
        f"- {report.events} pre-queued events per configuration (shipment lifecycles, "
        f"mixed event types), worker concurrency {report.concurrency}, "
        f"poll delay {report.poll_delay_s:g} s, batches of up to {report.batch}, "
        "no downstream; "
        f"machine: {report.machine.get('cpus')} CPUs, Python {report.machine.get('python')}",
        "",
    ]
    headers = (
        "worker processes", "drain s", "events/s", "events/s per process",
        "worker CPU ms/event", "workers' CPU %", "Redis commands/event", "store CPU ms/event",
        "store CPU %", "redis CPU %",
    )  # fmt: skip
    rows = [_row(str(r.workers), r) for r in report.rounds]
    if report.batch > 1:
        rows.append(_row(f"queue floor (1, batches of {report.batch}, no-op)", report.queue_floor))
    rows.append(_row("arq floor (1, arq's one-job runs, no-op)", report.arq_floor))
    lines += table(headers, rows)
    lines += [
        "",
        "CPU % is of one core (100 = one core busy for the whole drain). Worker CPU is the "
        "worker processes' own user + system time (psutil) during the drain.",
        "",
        *_floor_lines(report),
        "",
        "Redis commands per event, by command (one worker process; the arq floor): "
        + _commands(report.rounds[0])
        + "; floor: "
        + _commands(report.arq_floor),
        "",
        f"MongoDB round trips per event (happy path, PyMongo command monitoring, "
        f"{trips.sample} events run through the worker's EventProcessor in batches of "
        f"{trips.batch}): **{trips.per_event:g}** on average, at most {trips.max_per_event:g} "
        f"in any one batch (target ≤ 3); by command: "
        + ", ".join(f"{name} {n}" for name, n in trips.by_command.items()),
    ]
    for r in report.rounds:
        if r.profile is not None:
            lines += _profile_lines(r.profile)
    return "\n".join(lines) + "\n"


def _profile_lines(profile: Profile) -> list[str]:
    shares = [
        ("package (self)", profile.packages),
        ("frame (self)", profile.self_time),
        ("frame (inclusive)", profile.inclusive[:12]),
    ]
    lines = [
        "",
        f"py-spy on {profile.process} (100 Hz, % of samples; raw: `{profile.samples_file}`):",
    ]
    for title, rows in shares:
        lines += ["", *table((title, "%"), [(name, f"{pct:g}") for name, pct in rows])]
    return lines


def _row(label: str, r: RoundResult) -> tuple[str, ...]:
    measured = (r.drain_s, r.events_per_s, r.events_per_s_per_worker)
    cpu = (r.worker_cpu_ms_per_event, r.worker_cpu_pct, r.redis_commands_per_event)
    store_ms = "n/a" if r.store_cpu_ms_per_event is None else f"{r.store_cpu_ms_per_event:g}"
    store_pct = "n/a" if r.store_cpu_pct is None else f"{r.store_cpu_pct:g}"
    return (
        label,
        *(f"{v:g}" for v in (*measured, *cpu)),
        store_ms,
        store_pct,
        f"{r.redis_cpu_pct:g}",
    )


def _commands(r: RoundResult) -> str:
    return ", ".join(f"{name} {n:g}" for name, n in r.redis_commands.items())


def _floor_lines(report: BenchWorkerReport) -> list[str]:
    arq = report.arq_floor.worker_cpu_ms_per_event
    floor = report.queue_floor.worker_cpu_ms_per_event
    one = next((r for r in report.rounds if r.workers == 1), None)
    lines = [
        f"arq floor: **{arq:g} ms** of worker CPU per job for a job that does nothing, run by "
        "arq one job at a time on the worker's own settings and run path."
    ]
    if report.batch > 1:
        lines[0] += (
            f" Queue floor with the workers' batches of up to {report.batch}: **{floor:g} ms**."
        )
    if one is not None:
        ours = one.worker_cpu_ms_per_event
        lines[0] += (
            f" One worker: **{ours:g} ms** per event (target ≤ 1.0), of which "
            f"{ours - floor:.2f} ms is ours above the floor it runs on."
        )
        lines += [
            "",
            f"Estimate, not a measurement: against a store that keeps up, one worker process "
            f"on one core would reach about **{1000 / ours:,.0f} events/s** (1000 / CPU ms per "
            "event); "
            + (
                f"the floor alone would allow about {1000 / floor:,.0f} jobs/s."
                if floor > 0
                else "the floor was too small to measure in this run (psutil counts CPU in ticks)."
            ),
        ]
    return lines


def render_console(report: BenchWorkerReport, console: Console) -> None:
    table = Table(title=f"Worker capacity — {report.store}")
    columns = ("workers", "events/s", "per process", "worker CPU ms/event", "Redis cmd/event")
    for column in (*columns, "store CPU %"):
        table.add_column(column, justify="right")
    for label, r in [
        *((str(r.workers), r) for r in report.rounds),
        *([("queue floor", report.queue_floor)] if report.batch > 1 else []),
        ("arq floor", report.arq_floor),
    ]:
        table.add_row(
            label,
            f"{r.events_per_s:g}",
            f"{r.events_per_s_per_worker:g}",
            f"{r.worker_cpu_ms_per_event:g}",
            f"{r.redis_commands_per_event:g}",
            "n/a" if r.store_cpu_pct is None else f"{r.store_cpu_pct:g}",
        )
    console.print(table)
    for line in _floor_lines(report):
        console.print(line.replace("**", ""))
    console.print(
        f"MongoDB round trips per event: {report.round_trips.per_event:g} "
        f"(batches of {report.round_trips.batch}; max {report.round_trips.max_per_event:g} "
        "in one batch, target ≤ 3)"
    )
