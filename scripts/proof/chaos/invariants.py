"""What must hold after a chaos run, checked against what it collected: no accepted event
lost, each applied once, projections consistent, every duplicate delivery and dead letter
explained by a fault; and how long each fault took to recover from."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Final

from scripts.proof.chaos.driver import DriverResult, SentEvent
from scripts.proof.chaos.report import (
    Collected,
    DeliveryRecord,
    FaultKind,
    FaultRecord,
    Invariant,
)

__all__ = ["check_invariants", "compute_recovery"]

# The one fault that ends a run after a delivery without any log line saying so.
_SILENT_REDELIVERY_CAUSES: Final = frozenset({FaultKind.WORKER_KILL})


_EXAMPLES: Final = 10
TERMINAL: Final = frozenset({"succeeded", "dead_lettered"})
_TRANSIENT_CODES: Final = frozenset(
    {
        "store_unavailable",
        "queue_unavailable",
        "downstream_timeout",
        "downstream_unreachable",
        "downstream_unavailable",
        "job_timeout",
        "connection_error",
        "unexpected_error",
    }
)


def _invariant(
    name: str, problems: Sequence[str], summary: str, counts: dict[str, int] | None = None
) -> Invariant:
    return Invariant(
        name=name,
        passed=not problems,
        summary=summary,
        violations=len(problems),
        examples=list(problems[:_EXAMPLES]),
        counts=counts or {},
    )


def accepted_events(driver: DriverResult) -> list[SentEvent]:
    """Events finally answered 202 or 200."""
    return [e for e in driver.events if e.accepted]


def check_invariants(c: Collected) -> list[Invariant]:
    """Every invariant of the module docstring, in that order."""
    accepted = accepted_events(c.driver)
    ok_deliveries = _ok_deliveries(c.deliveries)
    return [
        _none_lost(c, accepted),
        _terminal(c, accepted),
        _applied_once(c),
        _projection_consistent(c),
        _delivered(c, accepted, ok_deliveries),
        _duplicates_explained(c, ok_deliveries),
        _dead_letters_explained(c, accepted),
        _queue_drained(c),
        _duplicates_answered(c),
        _answers_expected(c),
        _processes_survived(c),
    ]


def _none_lost(c: Collected, accepted: list[SentEvent]) -> Invariant:
    missing = [e.key for e in accepted if e.key not in c.processed]
    return _invariant(
        "none_lost",
        [f"{key}: accepted, not in processed_events" for key in missing],
        f"{len(accepted) - len(missing)}/{len(accepted)} accepted keys in processed_events",
    )


def _terminal(c: Collected, accepted: list[SentEvent]) -> Invariant:
    statuses = Counter(c.processed[e.key].status for e in accepted if e.key in c.processed)
    stuck = [
        f"{e.key}: {c.processed[e.key].status}"
        for e in accepted
        if e.key in c.processed and c.processed[e.key].status not in TERMINAL
    ]
    shown = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    return _invariant("terminal", stuck, f"accepted keys end {shown or 'nowhere'}", dict(statuses))


def _history_counts(c: Collected) -> dict[str, Counter[str]]:
    return {sid: Counter(entry[0] for entry in doc.history) for sid, doc in c.shipments.items()}


def _applied_once(c: Collected) -> Invariant:
    counts = _history_counts(c)
    sent = {e.event_id for e in c.driver.events}
    problems: list[str] = []
    applied = 0
    for event in c.driver.events:
        n = counts.get(event.shipment_id, Counter())[event.event_id]
        applied += n == 1
        doc = c.processed.get(event.key)
        if n > 1:
            problems.append(f"{event.key}: in its shipment's history {n} times")
        elif n == 0 and doc is not None and doc.status == "succeeded":
            problems.append(f"{event.key}: succeeded but not in its shipment's history")
    for shipment_id, events in counts.items():
        problems.extend(
            f"{shipment_id}: history holds {event_id}, which nobody sent"
            for event_id in events
            if event_id not in sent
        )
    return _invariant(
        "applied_once",
        problems,
        f"{applied} events applied exactly once on {len(c.shipments)} shipments; "
        f"{len(problems)} applied twice, missing or unknown",
        {"applied_once": applied, "shipments": len(c.shipments)},
    )


def _projection_consistent(c: Collected) -> Invariant:
    problems: list[str] = []
    for shipment_id, doc in c.shipments.items():
        if not doc.history:
            problems.append(f"{shipment_id}: empty history")
            continue
        # The newest occurred_at wins; of equal times the one applied later.
        newest = max(enumerate(doc.history), key=lambda item: (item[1][2], item[0]))[1]
        if (doc.status, doc.last_event_id) != (newest[1], newest[0]):
            problems.append(
                f"{shipment_id}: status {doc.status} / {doc.last_event_id}, "
                f"newest event is {newest[1]} / {newest[0]}"
            )
    sent_types = {e.event_id: e.event_type.removeprefix("shipment.") for e in c.driver.events}
    for shipment_id, doc in c.shipments.items():
        problems.extend(
            f"{shipment_id}: {event_id} recorded as {status}, sent as {sent_types[event_id]}"
            for event_id, status, _ in doc.history
            if event_id in sent_types and sent_types[event_id] != status
        )
    return _invariant(
        "projection_consistent",
        problems,
        f"{len(c.shipments) - len(problems)}/{len(c.shipments)} shipments show their newest event",
    )


def _ok_deliveries(deliveries: Iterable[DeliveryRecord]) -> dict[str, list[DeliveryRecord]]:
    found: dict[str, list[DeliveryRecord]] = defaultdict(list)
    for delivery in deliveries:
        if delivery.status is not None and 200 <= delivery.status < 300:
            found[delivery.key].append(delivery)
    for records in found.values():
        records.sort(key=lambda d: d.received_at)
    return found


def _delivered(
    c: Collected, accepted: list[SentEvent], ok: dict[str, list[DeliveryRecord]]
) -> Invariant:
    succeeded = [e.key for e in accepted if _status(c, e.key) == "succeeded"]
    undelivered = [key for key in succeeded if not ok.get(key)]
    dead_but_delivered = sum(
        1 for e in accepted if _status(c, e.key) == "dead_lettered" and ok.get(e.key)
    )
    sent = {e.key for e in c.driver.events}
    unknown = sorted(key for key in ok if key not in sent)
    problems = [f"{key}: succeeded without a 2xx delivery" for key in undelivered]
    problems += [f"{key}: delivered, but nobody sent it" for key in unknown]
    return _invariant(
        "delivered",
        problems,
        f"{len(succeeded) - len(undelivered)}/{len(succeeded)} succeeded keys delivered (2xx); "
        f"{sum(len(v) for v in ok.values())} 2xx deliveries of {len(c.deliveries)} received",
        {"dead_lettered_but_delivered": dead_but_delivered},
    )


def _status(c: Collected, key: str) -> str | None:
    doc = c.processed.get(key)
    return doc.status if doc is not None else None


def _containing_fault(
    c: Collected, at: float, kinds: Iterable[FaultKind] | None = None
) -> FaultRecord | None:
    wanted = set(kinds) if kinds is not None else set(FaultKind)
    for fault in c.faults:
        low, high = fault.window(c.job_timeout_s)
        if fault.kind in wanted and low <= at <= high:
            return fault
    return None


def _duplicates_explained(c: Collected, ok: dict[str, list[DeliveryRecord]]) -> Invariant:
    problems: list[str] = []
    causes: Counter[str] = Counter()
    for key, records in sorted(ok.items()):
        if len(records) < 2:
            continue
        first = records[0].received_at
        fault = _containing_fault(c, first, _SILENT_REDELIVERY_CAUSES)
        doc = c.processed.get(key)
        failures = [*(doc.attempt_log if doc else ()), *c.job_failures.get(key, ())]
        failed_after = sorted((at, code) for at, code in failures if at >= first)
        if fault is not None:
            causes[fault.kind.value] += 1
        elif failed_after:
            causes[f"failed_after_delivery:{failed_after[0][1]}"] += 1
        else:
            problems.append(
                f"{key}: {len(records)} 2xx deliveries, no fault or failure explains it"
            )
    total = sum(1 for records in ok.values() if len(records) > 1)
    by_cause = ", ".join(f"{n} {cause}" for cause, n in sorted(causes.items()))
    return _invariant(
        "duplicate_deliveries_explained",
        problems,
        f"{total} keys delivered (2xx) more than once"
        + (f" ({by_cause})" if by_cause else "")
        + f"; {len(problems)} unexplained",
        {"keys_delivered_twice_or_more": total, **causes},
    )


def _dead_letters_explained(c: Collected, accepted: list[SentEvent]) -> Invariant:
    problems: list[str] = []
    codes: Counter[str] = Counter()
    for event in accepted:
        if _status(c, event.key) != "dead_lettered":
            continue
        letter = c.dead_letters.get(event.key)
        if letter is None:
            problems.append(f"{event.key}: dead_lettered without a dead letter")
            continue
        codes[f"{letter.reason}/{letter.code}"] += 1
        if letter.reason != "retries_exhausted" or letter.code not in _TRANSIENT_CODES:
            problems.append(f"{event.key}: {letter.reason} {letter.code} (never expected here)")
            continue
        windows = [f.window(c.job_timeout_s) for f in c.faults]
        inside = any(all(low <= at <= high for at, _ in letter.attempts) for low, high in windows)
        if not inside:
            problems.append(f"{event.key}: {letter.code} attempts outside any fault window")
    total = sum(codes.values())
    shown = ", ".join(f"{n} {code}" for code, n in sorted(codes.items()))
    return _invariant(
        "dead_letters_explained",
        problems,
        f"{total} accepted keys dead-lettered" + (f" ({shown})" if shown else ""),
        dict(codes),
    )


def _queue_drained(c: Collected) -> Invariant:
    q = c.queue
    problems: list[str] = []
    if not c.drained:
        problems.append(f"not drained within the timeout ({c.drain_s:.0f} s)")
    if q.depth:
        problems.append(f"{q.depth} jobs still in the queue")
    if q.jobs_left:
        problems.append(f"{q.jobs_left} job records left in Redis")
    if q.in_progress:
        problems.append(f"{q.in_progress} in-progress keys left")
    problems.extend(f"{key}: failed by arq: {why}" for key, why in sorted(q.arq_failures.items()))
    return _invariant(
        "queue_drained",
        problems,
        f"queue empty {c.drain_s:.1f} s after the load stopped" if c.drained else problems[0],
    )


def _duplicates_answered(c: Collected) -> Invariant:
    answers = Counter(
        str(r.answer.status) if r.answer.status is not None else str(r.answer.error)
        for r in c.driver.resends
    )
    problems = [
        f"{r.key}: repeat of an accepted request answered 202"
        for r in c.driver.resends
        if r.answer.status == 202
    ]
    shown = ", ".join(f"{n} × {a}" for a, n in sorted(answers.items()))
    return _invariant(
        "duplicates_answered",
        problems,
        f"{len(c.driver.resends)} repeats of accepted requests answered {shown or 'nothing'}",
        dict(answers),
    )


def _answers_expected(c: Collected) -> Invariant:
    counts = c.driver.answer_counts()
    problems = [
        f"{n} × {label}"
        for label, n in counts.items()
        if label.isdigit() and label not in ("200", "202", "503")
    ]
    shown = ", ".join(f"{n} × {label}" for label, n in counts.items())
    return _invariant("answers_expected", problems, f"answers: {shown}", counts)


def _processes_survived(c: Collected) -> Invariant:
    problems = list(c.unexpected_exits)
    for fault in c.faults:
        if fault.kind is FaultKind.WORKER_TERM:
            code = fault.details.get("exit_code")
            if code != 0:
                problems.append(f"{fault.target}: SIGTERM → exit {code}")
    return _invariant(
        "processes_survived",
        problems,
        "no process died unless the harness stopped it; SIGTERMed workers exited 0"
        if not problems
        else f"{len(problems)} unexpected process exits",
    )


# ---- recovery ------------------------------------------------------------------------------


def compute_recovery(c: Collected) -> None:
    """Fill each fault's ``recovery`` from what was collected (definitions in docs/reliability.md).

    * ``api_2xx_s`` — fault end → the first 2xx answer to a request sent after it;
    * ``backlog_s`` — fault end → queue depth back to at most
      max(pre-fault depth + 10, 1.5 × pre-fault depth), pre-fault = median of
      the 5 s before the fault; ``None`` (and a ``backlog`` note) when the
      next fault began first;
    * ``in_flight_done_s`` — fault start → every job the worker held is terminal;
    * ``first_completion_s`` — fault end → the first job completed after it;
    * ``first_delivery_s`` — fault end → the first 2xx delivery after it;
    * ``first_2xx_after_kill_s`` (``redis_primary_kill``) — the SIGKILL → the
      first 2xx to a request sent after it; the 503s answered in between are
      the fault's ``answers_503_meanwhile``.
    """
    completions = sorted(d.completed_at for d in c.processed.values() if d.completed_at)
    ok_times = sorted(
        d.received_at for d in c.deliveries if d.status is not None and 200 <= d.status < 300
    )
    answers = sorted((a.sent_at, a.at) for e in c.driver.events for a in e.answers if a.ok)
    starts = [f.started_at for f in c.faults[1:]] + [float("inf")]
    for fault, next_start in zip(c.faults, starts, strict=True):
        end = fault.ended_at
        recovery: dict[str, float | None] = {"backlog_s": _backlog_s(c.samples, fault, next_start)}
        if fault.kind in (FaultKind.WORKER_KILL, FaultKind.WORKER_TERM):
            keys = fault.details.get("in_flight", [])
            done = [c.processed.get(k) for k in keys]
            if keys and all(d is not None and d.completed_at for d in done):
                last = max(d.completed_at for d in done if d is not None and d.completed_at)
                recovery["in_flight_done_s"] = round(last - fault.started_at, 2)
            else:
                recovery["in_flight_done_s"] = None
        if fault.kind in (FaultKind.REDIS_RESTART, FaultKind.REDIS_CRASH):
            after = [at for sent, at in answers if sent >= end]
            recovery["api_2xx_s"] = round(min(after) - end, 2) if after else None
        if fault.kind in (FaultKind.MONGO_OUTAGE, FaultKind.REDIS_RESTART, FaultKind.REDIS_CRASH):
            later = [t for t in completions if t > end]
            recovery["first_completion_s"] = round(later[0] - end, 2) if later else None
        if fault.kind is FaultKind.REDIS_PRIMARY_KILL:
            # From the SIGKILL: how long couriers waited for a 2xx, and what they got meanwhile.
            after_kill = [at for sent, at in answers if sent >= fault.started_at]
            first = min(after_kill) if after_kill else None
            recovery["first_2xx_after_kill_s"] = (
                round(first - fault.started_at, 2) if first is not None else None
            )
            fault.details["answers_503_meanwhile"] = sum(
                1
                for e in c.driver.events
                for a in e.answers
                if a.status == 503 and a.at >= fault.started_at and (first is None or a.at <= first)
            )
            later = [t for t in completions if t > end]
            recovery["first_completion_s"] = round(later[0] - end, 2) if later else None
        if fault.kind is FaultKind.DOWNSTREAM_OUTAGE:
            later = [t for t in ok_times if t > end]
            recovery["first_delivery_s"] = round(later[0] - end, 2) if later else None
        fault.recovery.update(recovery)


def _backlog_s(
    samples: list[tuple[float, int | None]], fault: FaultRecord, until: float
) -> float | None:
    before = [
        d for t, d in samples if fault.started_at - 5 <= t < fault.started_at and d is not None
    ]
    if not before:
        return None
    pre = statistics.median(before)
    threshold = max(pre + 10, 1.5 * pre)
    last: int | None = None
    for t, depth in samples:
        if fault.ended_at <= t < until and depth is not None:
            if depth <= threshold:
                return round(max(0.0, t - fault.ended_at), 2)
            last = depth
    if until != float("inf"):
        fault.details["backlog"] = (
            f"{last} jobs queued (pre-fault {pre:g}) when the next fault began "
            f"{until - fault.ended_at:.0f} s later"
        )
    return None


# ---- report --------------------------------------------------------------------------------
