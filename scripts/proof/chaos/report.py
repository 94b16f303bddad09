"""What ``gateway chaos`` concludes: the invariants, recovery times, the report.

The invariants are those of docs/contract.md §6.

Everything here is pure: it reads what the run collected (:class:`Collected`
— the couriers' answers, the faults as injected, MongoDB's documents, the
downstream's deliveries, Redis's leftovers) and decides. The tests feed it
synthetic data to show each invariant failing.

Invariants, over every key the couriers finally got 202 or 200 for
("accepted"):

* ``none_lost`` — it is in ``processed_events``;
* ``terminal`` — it ended ``succeeded`` or ``dead_lettered``;
* ``applied_once`` — its event is in its shipment's history exactly once when
  succeeded, at most once otherwise (for every sent event, accepted or not),
  and no history holds an event nobody sent;
* ``projection_consistent`` — each shipment's status and ``last_event_id``
  are those of the newest event in its history;
* ``delivered`` — a succeeded key had at least one 2xx delivery downstream;
* ``duplicate_deliveries_explained`` — a key delivered (2xx) more than once
  is allowed by the at-least-once contract only when a run died or could not
  record its outcome after delivering: a worker was SIGKILLed within the
  window of its first 2xx delivery (a killed run logs nothing), or a run of
  the key failed or was cancelled after that delivery (the workers' own
  ``job.retrying`` / ``job.cancelled`` log lines, or its ``attempt_log``);
* ``dead_letters_explained`` — a dead-lettered key has its dead letter, with
  reason ``retries_exhausted``, a transient code, and every attempt within
  one fault's window (the generated events are never permanently invalid);
* ``queue_drained`` — after the load, within the drain timeout: queue empty,
  no job or in-progress key left, no job failed by arq itself;
* ``duplicates_answered`` — a repeat of an accepted request never got 202
  (that would mean the queue forgot an accepted key);
* ``answers_expected`` — no request was answered 4xx or a 5xx other than 503;
* ``processes_survived`` — no gateway process exited unless the harness
  stopped it, and every SIGTERMed worker exited 0 within its grace period.

A fault's *window* is ``[start − job timeout, end + job timeout]``: a job
running when the fault began, or retried right after it ended.
"""

from __future__ import annotations

import enum
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import Struct

from scripts.proof.chaos.driver import DriverResult
from scripts.proof.markdown import table

__all__ = [
    "Collected",
    "DeadLetterDoc",
    "DeliveryRecord",
    "FaultKind",
    "FaultRecord",
    "Invariant",
    "ProcessedDoc",
    "QueueState",
    "Report",
    "ShipmentDoc",
    "render_markdown",
]


class FaultKind(enum.StrEnum):
    """What the harness breaks."""

    WORKER_KILL = "worker_kill"
    WORKER_TERM = "worker_term"
    REDIS_RESTART = "redis_restart"
    REDIS_CRASH = "redis_crash"
    REDIS_PRIMARY_KILL = "redis_primary_kill"
    MONGO_OUTAGE = "mongo_outage"
    DOWNSTREAM_OUTAGE = "downstream_outage"


class FaultRecord(Struct, kw_only=True):
    """One injected fault as it happened (wall-clock seconds)."""

    kind: FaultKind
    target: str
    planned_at_s: float
    started_at: float
    ended_at: float
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    recovery: dict[str, float | None] = msgspec.field(default_factory=dict)

    def window(self, job_timeout_s: float) -> tuple[float, float]:
        return self.started_at - job_timeout_s, self.ended_at + job_timeout_s


class ProcessedDoc(Struct, frozen=True, kw_only=True):
    """What the check needs of a ``processed_events`` document."""

    status: str
    attempts: int = 0
    completed_at: float | None = None
    attempt_log: tuple[tuple[float, str], ...] = ()
    """(at, code) of each failed attempt."""


class ShipmentDoc(Struct, frozen=True, kw_only=True):
    """What the check needs of an ``active_shipments`` document."""

    status: str
    last_event_id: str
    history: tuple[tuple[str, str, float], ...]
    """(event_id, status, occurred_at) of each entry, in stored order."""


class DeadLetterDoc(Struct, frozen=True, kw_only=True):
    """What the check needs of a ``dead_letter_events`` document."""

    reason: str
    code: str
    attempts: tuple[tuple[float, str], ...]


class DeliveryRecord(Struct, frozen=True, kw_only=True):
    """One delivery the downstream received."""

    key: str
    status: int | None
    received_at: float


class QueueState(Struct, frozen=True, kw_only=True):
    """Redis after the drain."""

    depth: int
    jobs_left: int
    in_progress: int
    arq_failures: dict[str, str] = msgspec.field(default_factory=dict)
    """key → arq's stored failure, for jobs arq failed without our code ending them."""


class Collected(Struct, kw_only=True):
    """Everything the run collected, as plain data."""

    driver: DriverResult
    faults: list[FaultRecord]
    processed: dict[str, ProcessedDoc]
    shipments: dict[str, ShipmentDoc]
    """By shipment id (the courier's, without the source)."""
    dead_letters: dict[str, DeadLetterDoc]
    deliveries: list[DeliveryRecord]
    queue: QueueState
    drained: bool
    drain_s: float
    samples: list[tuple[float, int | None]]
    """(wall time, queue depth or None while Redis was unreachable), about every second."""
    unexpected_exits: list[str] = msgspec.field(default_factory=list)
    job_failures: dict[str, list[tuple[float, str]]] = msgspec.field(default_factory=dict)
    """key → (time, code) of each run that failed or was cancelled, from the workers' logs."""
    job_timeout_s: float = 5.0


class Invariant(Struct, kw_only=True):
    """One checked property."""

    name: str
    passed: bool
    summary: str
    violations: int = 0
    examples: list[str] = msgspec.field(default_factory=list)
    counts: dict[str, int] = msgspec.field(default_factory=dict)


class Report(Struct, kw_only=True):
    """``report.json``."""

    passed: bool
    started: str
    command: str
    config: dict[str, Any]
    environment: dict[str, str]
    load: dict[str, Any]
    faults: list[FaultRecord]
    invariants: list[Invariant]
    drain_s: float
    drained: bool
    timeline: list[dict[str, Any]]


def load_summary(driver: DriverResult) -> dict[str, Any]:
    """Sent, accepted, duplicates, retries, never accepted."""
    events = driver.events
    outcomes = Counter(e.outcome or "pending" for e in events)
    retried = [e for e in events if len(e.answers) > 1]
    seconds = max(1e-9, driver.stopped_at - driver.started_at)
    return {
        "seconds": round(seconds, 1),
        "events_sent": len(events),
        "events_per_s": round(len(events) / seconds, 1),
        "requests": sum(len(e.answers) for e in events) + len(driver.resends),
        "accepted_202": outcomes["accepted"],
        "accepted_200_after_retry": outcomes["duplicate"],
        "never_accepted_gave_up": outcomes["gave_up"],
        "never_accepted_rejected": outcomes["rejected"],
        "events_retried_by_courier": len(retried),
        "courier_retries": sum(len(e.answers) - 1 for e in events),
        "resends": len(driver.resends),
        "answers": driver.answer_counts(),
        "late_sends": driver.late_sends,
    }


def timeline(c: Collected, step_s: float = 10.0) -> list[dict[str, Any]]:
    """Per ``step_s``: events sent, acknowledged, 503 answers, max queue depth, faults active."""
    start = c.driver.started_at
    end = max([c.driver.stopped_at, *(t for t, _ in c.samples)])
    rows: list[dict[str, Any]] = []
    t = start
    while t < end:
        high = t + step_s
        depths = [d for s, d in c.samples if t <= s < high and d is not None]
        rows.append(
            {
                "t_s": round(t - start),
                "sent": sum(
                    1 for e in c.driver.events if e.answers and t <= e.answers[0].sent_at < high
                ),
                "acked": sum(1 for e in c.driver.events if (a := e.acked_at) and t <= a < high),
                "answers_503": sum(
                    1
                    for e in c.driver.events
                    for a in e.answers
                    if a.status == 503 and t <= a.at < high
                ),
                "queue_depth_max": max(depths) if depths else None,
                "faults": [
                    f.kind.value for f in c.faults if f.started_at < high and f.ended_at >= t
                ],
            }
        )
        t = high
    return rows


def _fmt_time(ts: float, origin: float) -> str:
    return f"{ts - origin:+.1f} s"


def render_markdown(report: Report) -> str:
    """``report.md``."""
    origin = report.config.get("load_started_at", 0.0)
    lines = [
        f"# Chaos run — {'PASS' if report.passed else 'FAIL'}",
        "",
        f"Started {report.started}. Command: `{report.command}`",
        "",
        "## Configuration",
        "",
    ]
    config = [(k, v) for k, v in report.config.items() if k != "load_started_at"]
    lines += table(("setting", "value"), config)
    lines += ["", *table(("environment", "value"), report.environment.items())]
    load = report.load
    lines += [
        "",
        "## Load",
        "",
        f"{load['events_sent']} events in {load['seconds']} s ({load['events_per_s']}/s): "
        f"{load['accepted_202']} accepted with 202, {load['accepted_200_after_retry']} "
        f"with 200 after a retry, {load['never_accepted_gave_up']} never accepted (the courier "
        f"gave up), {load['never_accepted_rejected']} rejected. "
        f"{load['events_retried_by_courier']} events needed courier retries "
        f"({load['courier_retries']} retries); "
        f"{load['resends']} repeats of accepted requests. Requests: {load['requests']}; "
        f"answers: " + ", ".join(f"{n} × {a}" for a, n in load["answers"].items()) + ".",
        "",
        "## Faults",
        "",
        "Times are relative to the start of the load.",
        "",
    ]
    faults = []
    for number, fault in enumerate(report.faults, 1):
        details = "; ".join(
            f"{k}={_short(v)}" for k, v in fault.details.items() if k != "in_flight"
        )
        recovery = "; ".join(
            f"{k}={'—' if v is None else f'{v:g} s'}" for k, v in fault.recovery.items()
        )
        start, end = _fmt_time(fault.started_at, origin), _fmt_time(fault.ended_at, origin)
        faults.append((number, fault.kind.value, fault.target, start, end, details, recovery))
    lines += table(("#", "fault", "target", "start", "end", "details", "recovery"), faults)
    lines += ["", "## Invariants", ""]
    lines += table(
        ("invariant", "result", ""),
        ((inv.name, "PASS" if inv.passed else "FAIL", inv.summary) for inv in report.invariants),
    )
    failing = [inv for inv in report.invariants if not inv.passed]
    for inv in failing:
        lines += ["", f"### {inv.name}: {inv.violations} violations", ""]
        lines += [f"- {example}" for example in inv.examples]
    drained = (
        f"Drained {report.drain_s:.1f} s after the load stopped."
        if report.drained
        else f"NOT drained within {report.drain_s:.0f} s."
    )
    lines += [
        "",
        "## Drain",
        "",
        drained,
        "",
        "## Timeline",
        "",
    ]
    lines += table(
        ("t (s)", "sent", "acked", "503 answers", "max queue depth", "faults"),
        (
            (
                row["t_s"],
                row["sent"],
                row["acked"],
                row["answers_503"],
                "—" if row["queue_depth_max"] is None else row["queue_depth_max"],
                ", ".join(row["faults"]),
            )
            for row in report.timeline
        ),
    )
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def iso(ts: float) -> str:
    """``ts`` as an RFC 3339 UTC time, to the second."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
