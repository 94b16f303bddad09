"""The load test's verdicts, as pure functions of what a run collected.

The criteria are docs/contract.md §6's (SC-001..SC-004).

``gateway loadtest`` gathers the facts — Locust's statistics, one
:class:`~scripts.proof.loadtest.records.SentRecord` per request, each accepted
key's ``processed_events`` document, the mock downstream's deliveries and
the touched shipments' histories — into :class:`Collected`; :func:`evaluate`
turns them into one :class:`Criterion` per success criterion:

* **SC-001 ack latency** — Locust's p95 of all requests under
  ``max_p95_ms``; error rate (Locust failures / requests) at most
  ``max_error_rate``; no 5xx answer at all.
* **SC-002 terminal completeness** — every key acknowledged ``202`` is
  ``succeeded`` or ``dead_lettered`` in ``processed_events`` after the drain.
* **SC-003 no duplicate side effects** — the API acknowledged each key with
  ``202`` at most once; each ``succeeded`` key got exactly one *successful*
  (2xx-answered) downstream delivery and a ``dead_lettered`` one none (a
  transiently failing downstream sees several deliveries of a key — only one
  of them is answered 2xx, and only that one is an effect); each accepted
  event appears in its shipment's history exactly once when it succeeded and
  at most once when it was dead-lettered.
* **SC-004 retry recovery** — of the accepted keys that met a transient
  failure (the mock answered 408/425/429/5xx or the worker went away before
  the answer, or ``processed_events.attempts`` ≥ 1), at least
  ``min_recovery_ratio`` ended ``succeeded``.

Nothing here does I/O: the functions are unit-tested on small synthetic data
(``tests/scripts/test_load_report.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec
from msgspec import Struct

from scripts.proof.loadtest.records import SentRecord
from scripts.proof.markdown import table
from scripts.proof.probes import Profile
from scripts.traffic.observe import Drain, KeyState

__all__ = [
    "Collected",
    "Criterion",
    "DeliveryCounts",
    "LatencySummary",
    "LoadWindow",
    "Profile",
    "Report",
    "Thresholds",
    "count_deliveries",
    "latency_from_locust",
    "render_markdown",
]

TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})


class Thresholds(Struct, frozen=True, kw_only=True):
    """Pass/fail limits; defaults are docs/contract.md §6's."""

    max_p95_ms: float = 100.0
    max_error_rate: float = 0.0
    min_terminal_ratio: float = 1.0
    min_recovery_ratio: float = 0.99


class LatencySummary(Struct, frozen=True, kw_only=True):
    """Locust's client-side statistics of the run (all requests together)."""

    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    duration_s: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


class DeliveryCounts(Struct, frozen=True, kw_only=True):
    """Per idempotency key: deliveries received, answered 2xx, and met a transient failure."""

    total: dict[str, int]
    ok: dict[str, int]
    transient: dict[str, int]


class Collected(Struct, frozen=True, kw_only=True):
    """Everything a run observed, as :func:`evaluate` needs it.

    ``deliveries`` is ``None`` when no mock downstream could be asked;
    ``histories`` maps a shipment ``_id`` to the ``event_id`` of every entry
    of its history; ``expect_transient`` says the downstream was told to fail
    transiently, so a run where no event met a failure is a miss.
    """

    latency: LatencySummary
    records: Sequence[SentRecord]
    states: Mapping[str, KeyState]
    deliveries: DeliveryCounts | None
    histories: Mapping[str, Sequence[str]]
    drain: Drain
    expect_transient: bool


class Criterion(Struct, frozen=True, kw_only=True):
    """One success criterion's verdict."""

    id: str
    title: str
    target: str
    measured: str
    passed: bool
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class LoadWindow(Struct, frozen=True, kw_only=True):
    """What the stack did while Locust ran: CPU per process and queue depth (sampled ~1/s)."""

    seconds: float
    cpu_s: dict[str, float]
    queue_depth: list[int]

    @property
    def queue_depth_max(self) -> int:
        return max(self.queue_depth, default=0)


class Report(Struct, kw_only=True):
    """``report.json``: the run, its facts and the verdicts."""

    passed: bool
    criteria: list[Criterion]
    run: dict[str, Any]
    requests: dict[str, Any]
    latency: LatencySummary
    drain: Drain
    worker_jobs: dict[str, float] = msgspec.field(default_factory=dict)
    window: LoadWindow | None = None
    profiles: list[Profile] = msgspec.field(default_factory=list)


# ---------------------------------------------------------------- inputs


def latency_from_locust(entries: Sequence[Mapping[str, Any]]) -> LatencySummary:
    """Merge the entries of Locust's ``--json-file`` into one summary.

    Percentiles are computed from Locust's response-time histogram exactly as
    Locust computes them (``calculate_response_time_percentile``).
    """
    histogram: Counter[float] = Counter()
    requests = failures = 0
    total_ms = 0.0
    max_ms = 0.0
    first = float("inf")
    last = 0.0
    for entry in entries:
        requests += int(entry.get("num_requests", 0))
        failures += int(entry.get("num_failures", 0))
        total_ms += float(entry.get("total_response_time", 0) or 0)
        max_ms = max(max_ms, float(entry.get("max_response_time", 0) or 0))
        for bucket, count in (entry.get("response_times") or {}).items():
            histogram[float(bucket)] += int(count)
        if entry.get("start_time"):
            first = min(first, float(entry["start_time"]))
        if entry.get("last_request_timestamp"):
            last = max(last, float(entry["last_request_timestamp"]))
    duration = last - first if last > first else 0.0

    def percentile(fraction: float) -> float:
        wanted = int(requests * fraction)
        seen = 0
        for bucket in sorted(histogram, reverse=True):
            seen += histogram[bucket]
            if requests - seen <= wanted:
                return bucket
        return 0.0

    return LatencySummary(
        requests=requests,
        failures=failures,
        p50_ms=percentile(0.50),
        p95_ms=percentile(0.95),
        p99_ms=percentile(0.99),
        max_ms=round(max_ms, 1),
        mean_ms=round(total_ms / requests, 1) if requests else 0.0,
        duration_s=round(duration, 1),
    )


def count_deliveries(deliveries: Iterable[tuple[str | None, int | None, bool]]) -> DeliveryCounts:
    """Per-key counts from the mock's deliveries as ``(webhook_id, status, disconnected)``.

    A delivery met a transient failure when it was answered 408, 425, 429 or
    5xx, or when the sender went away before the answer (a timeout).
    """
    total: Counter[str] = Counter()
    ok: Counter[str] = Counter()
    transient: Counter[str] = Counter()
    for key, status, disconnected in deliveries:
        if key is None:
            continue
        total[key] += 1
        if status is not None and 200 <= status < 300:
            ok[key] += 1
        elif disconnected or (
            status is not None and (status >= 500 or status in TRANSIENT_STATUSES)
        ):
            transient[key] += 1
    return DeliveryCounts(total=dict(total), ok=dict(ok), transient=dict(transient))


def accepted_keys(records: Iterable[SentRecord]) -> dict[str, str]:
    """Every key acknowledged ``202`` at least once → its shipment ``_id``."""
    return {r.key: r.shipment for r in records if r.status == 202}


# ---------------------------------------------------------------- criteria


def request_mix(records: Sequence[SentRecord]) -> dict[str, Any]:
    """Requests by kind and answer (``new`` / ``resend`` / ``out_of_order`` × status)."""
    by_kind: dict[str, Counter[str]] = {}
    for record in records:
        by_kind.setdefault(record.kind, Counter())[str(record.status)] += 1
    return {
        "total": len(records),
        "accepted_unique": len(accepted_keys(records)),
        "shipments": len({r.shipment for r in records}),
        "by_kind": {kind: dict(sorted(c.items())) for kind, c in sorted(by_kind.items())},
    }


# ---------------------------------------------------------------- rendering


def render_markdown(report: Report) -> str:
    """``report.md``: verdict table first, then how the run was made and what it saw."""
    run = report.run
    verdict = "PASS" if report.passed else "MISS"
    lines = [
        f"# Load test report — {verdict}",
        "",
        f"- started: {run.get('started_at', '?')}",
        f"- command: `{run.get('command', '?')}`",
        f"- target: {run.get('target', '?')}",
        f"- store: {run.get('store', '?')}",
        "",
    ]
    lines += table(
        ("criterion", "target", "measured", "verdict"),
        (
            (f"{c.id} {c.title}", c.target, c.measured, "PASS" if c.passed else "**MISS**")
            for c in report.criteria
        ),
    )
    latency = report.latency
    lines += [
        "",
        "## Load",
        "",
        f"- users: {run.get('users')}, duration: {run.get('duration_s')} s, "
        f"target rate: {run.get('rate_per_s')} requests/s, achieved: "
        f"{latency.requests_per_s:.1f} requests/s over {latency.duration_s:g} s",
        f"- resend probability: {run.get('duplicate_ratio')}, out-of-order pair probability: "
        f"{run.get('out_of_order_ratio')}",
        f"- requests: {report.requests.get('total')} recorded, "
        f"{report.requests.get('accepted_unique')} unique keys accepted, "
        f"{report.requests.get('shipments')} shipments",
        "",
    ]
    lines += table(
        ("kind", "answers"),
        (
            (kind, ", ".join(f"{status}: {n}" for status, n in statuses.items()))
            for kind, statuses in report.requests.get("by_kind", {}).items()
        ),
    )
    lines += ["", "Ack latency (Locust, client side, all requests):", ""]
    times = (latency.mean_ms, latency.p50_ms, latency.p95_ms, latency.p99_ms, latency.max_ms)
    lines += table(
        ("requests", "failures", "mean", "p50", "p95", "p99", "max"),
        [(latency.requests, latency.failures, *(f"{ms:g} ms" for ms in times))],
    )
    lines += [
        "",
        "## Drain",
        "",
        f"- queue empty and every accepted key terminal: "
        f"{'yes' if report.drain.drained else 'NO'} after {report.drain.seconds:g} s "
        f"(bound {run.get('drain_timeout_s')} s); jobs left {report.drain.queue_left}, "
        f"non-terminal keys left {report.drain.non_terminal_left}",
    ]
    if report.worker_jobs:
        jobs = ", ".join(f"{name}: {value:g}" for name, value in report.worker_jobs.items())
        lines.append(f"- workers' metrics (summed over the workers): {jobs}")
    if report.window is not None:
        lines += _render_window(report.window, latency.requests)
    if report.profiles:
        lines += _render_profiles(report.profiles)
    lines += ["", "## Stack", ""]
    for name, value in run.get("stack", {}).items():
        lines.append(f"- {name}: {value}")
    lines += ["", "## Details per criterion", ""]
    for criterion in report.criteria:
        lines.append(f"### {criterion.id} {criterion.title}")
        lines.append("")
        lines.append("```json")
        lines.append(msgspec.json.format(msgspec.json.encode(criterion.details), indent=2).decode())
        lines.append("```")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _render_window(window: LoadWindow, requests: int) -> list[str]:
    depth = window.queue_depth
    lines = [
        "",
        "## Where the CPU went during the load",
        "",
        f"CPU time of each process over the {window.seconds:g} s Locust ran "
        "(100 % = one core; the machine's cores are shared by all of them):",
        "",
    ]
    rows: list[tuple[str, str, str, str]] = []
    for name, cpu_s in sorted(window.cpu_s.items(), key=lambda item: -item[1]):
        share = 100 * cpu_s / window.seconds if window.seconds else 0.0
        per_request = 1000 * cpu_s / requests if requests else 0.0
        rows.append((name, f"{cpu_s:g}", f"{share:.0f}", f"{per_request:.2f}"))
    total = sum(window.cpu_s.values())
    if window.seconds:
        total_share = 100 * total / window.seconds
        total_per_request = 1000 * total / requests if requests else 0.0
        rows.append(("**all**", f"{total:.1f}", f"{total_share:.0f}", f"{total_per_request:.2f}"))
    lines += table(("process", "CPU s", "% of one core", "CPU ms per request"), rows)
    lines += [
        "",
        "Queue depth (jobs queued or deferred, sampled each second): "
        f"max {window.queue_depth_max}, at the end of the load {depth[-1] if depth else 0}.",
    ]
    return lines


def _render_profiles(profiles: Sequence[Profile]) -> list[str]:
    lines = ["", "## Profiles (py-spy samples during the load)", ""]
    for profile in profiles:
        packages = ", ".join(f"{name} {share:g} %" for name, share in profile.packages[:8])
        lines += [
            f"### {profile.process}",
            "",
            f"Self time by package: {packages}.",
            "",
        ]
        frames = ((f"{share:g}", f"`{frame}`") for frame, share in profile.self_time[:10])
        lines += table(("self %", "frame"), frames)
        lines += ["", f"Raw stacks: `{profile.samples_file}`", ""]
    return lines
