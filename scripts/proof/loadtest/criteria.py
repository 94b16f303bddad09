"""The load test's success criteria SC-001..SC-004, as pure functions of what a run collected."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Final

from scripts.proof.loadtest.records import SentRecord
from scripts.proof.loadtest.report import (
    Collected,
    Criterion,
    DeliveryCounts,
    LatencySummary,
    Thresholds,
    accepted_keys,
)
from scripts.traffic.observe import TERMINAL, Drain, KeyState

__all__ = [
    "evaluate",
    "sc001_ack_latency",
    "sc002_terminal_states",
    "sc003_no_duplicate_effects",
    "sc004_retry_recovery",
]

_EXAMPLES: Final = 10


def sc001_ack_latency(
    latency: LatencySummary, records: Sequence[SentRecord], thresholds: Thresholds
) -> Criterion:
    """Ack latency p95, error rate and 5xx answers, as the load generator saw them."""
    statuses = Counter(r.status for r in records)
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    error_rate = latency.failures / latency.requests if latency.requests else 1.0
    p95_ok = latency.p95_ms < thresholds.max_p95_ms
    passed = (
        latency.requests > 0
        and p95_ok
        and error_rate <= thresholds.max_error_rate
        and server_errors == 0
    )
    return Criterion(
        id="SC-001",
        title="ack latency and errors",
        target=(
            f"p95 < {thresholds.max_p95_ms:g} ms, error rate ≤ {thresholds.max_error_rate:.2%}, "
            "zero 5xx"
        ),
        measured=(
            f"p50 {latency.p50_ms:g} ms, p95 {latency.p95_ms:g} ms, p99 {latency.p99_ms:g} ms; "
            f"error rate {error_rate:.2%} ({latency.failures}/{latency.requests}); "
            f"5xx {server_errors}"
        ),
        passed=passed,
        details={
            "requests": latency.requests,
            "failures": latency.failures,
            "error_rate": round(error_rate, 6),
            "server_errors": server_errors,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "p50_ms": latency.p50_ms,
            "p95_ms": latency.p95_ms,
            "p99_ms": latency.p99_ms,
            "max_ms": latency.max_ms,
            "records": len(records),
        },
    )


def sc002_terminal_states(
    records: Sequence[SentRecord],
    states: Mapping[str, KeyState],
    drain: Drain,
    thresholds: Thresholds,
) -> Criterion:
    """Every accepted unique key ended ``succeeded`` or ``dead_lettered``."""
    accepted = accepted_keys(records)
    outcome: Counter[str] = Counter()
    stuck: dict[str, str] = {}
    for key in accepted:
        state = states.get(key)
        status = state.status if state is not None else None
        outcome[status or "missing"] += 1
        if status not in TERMINAL and len(stuck) < _EXAMPLES:
            stuck[key] = status or "missing"
    terminal = outcome["succeeded"] + outcome["dead_lettered"]
    ratio = terminal / len(accepted) if accepted else 0.0
    return Criterion(
        id="SC-002",
        title="accepted events reach a terminal state",
        target=f"≥ {thresholds.min_terminal_ratio:.2%} of accepted unique keys terminal",
        measured=(
            f"{terminal}/{len(accepted)} terminal ({ratio:.2%}): "
            f"{outcome['succeeded']} succeeded, {outcome['dead_lettered']} dead-lettered; "
            f"drained in {drain.seconds:g} s"
            + ("" if drain.drained else f" (NOT drained: {drain.queue_left} jobs left)")
        ),
        passed=bool(accepted) and ratio >= thresholds.min_terminal_ratio,
        details={
            "accepted_unique": len(accepted),
            "by_status": dict(sorted(outcome.items())),
            "terminal_ratio": round(ratio, 6),
            "not_terminal_examples": stuck,
            "drained": drain.drained,
            "drain_s": drain.seconds,
        },
    )


def sc003_no_duplicate_effects(
    records: Sequence[SentRecord],
    states: Mapping[str, KeyState],
    deliveries: DeliveryCounts | None,
    histories: Mapping[str, Sequence[str]],
) -> Criterion:
    """Each key acknowledged once, delivered successfully once, and applied once."""
    accepted = accepted_keys(records)
    acks = Counter(r.key for r in records if r.status == 202)
    accepted_twice = sorted(k for k, n in acks.items() if n > 1)
    applied: dict[str, Counter[str]] = {
        shipment: Counter(event_ids) for shipment, event_ids in histories.items()
    }
    problems: dict[str, list[str]] = {
        "accepted_twice": accepted_twice,
        "delivered_more_than_once": [],
        "succeeded_not_delivered": [],
        "dead_lettered_but_delivered": [],
        "applied_more_than_once": [],
        "succeeded_not_applied": [],
    }
    for key, shipment in accepted.items():
        status = states[key].status if key in states else None
        event_id = key.partition(":")[2]
        times_applied = applied.get(shipment, Counter())[event_id]
        if times_applied > 1:
            problems["applied_more_than_once"].append(key)
        elif times_applied == 0 and status == "succeeded":
            problems["succeeded_not_applied"].append(key)
        if deliveries is None:
            continue
        ok = deliveries.ok.get(key, 0)
        if ok > 1:
            problems["delivered_more_than_once"].append(key)
        elif ok == 0 and status == "succeeded":
            problems["succeeded_not_delivered"].append(key)
        elif ok and status == "dead_lettered":
            problems["dead_lettered_but_delivered"].append(key)
    counts = {name: len(keys) for name, keys in problems.items()}
    deliveries_total = sum(deliveries.total.get(k, 0) for k in accepted) if deliveries else None
    deliveries_ok = sum(deliveries.ok.get(k, 0) for k in accepted) if deliveries else None
    measured = (
        f"keys acknowledged 202 twice {counts['accepted_twice']}; "
        f"applied twice {counts['applied_more_than_once']}, "
        f"succeeded but not in history {counts['succeeded_not_applied']}; "
    )
    if deliveries is None:
        measured += "downstream deliveries not checked (no mock downstream to ask)"
    else:
        measured += (
            f"delivered (2xx) more than once {counts['delivered_more_than_once']}, "
            f"succeeded without a 2xx delivery {counts['succeeded_not_delivered']}, "
            f"dead-lettered yet delivered {counts['dead_lettered_but_delivered']} "
            f"({deliveries_ok} successful of {deliveries_total} deliveries)"
        )
    return Criterion(
        id="SC-003",
        title="no duplicate side effects",
        target=(
            "each key: one 202; succeeded → exactly one 2xx delivery and one history entry; "
            "dead-lettered → no 2xx delivery, at most one history entry"
        ),
        measured=measured,
        passed=bool(accepted) and not any(counts.values()),
        details={
            "counts": counts,
            "examples": {name: keys[:_EXAMPLES] for name, keys in problems.items() if keys},
            "deliveries_checked": deliveries is not None,
            "deliveries_total": deliveries_total,
            "deliveries_ok": deliveries_ok,
            "shipments_checked": len(histories),
        },
    )


def sc004_retry_recovery(
    records: Sequence[SentRecord],
    states: Mapping[str, KeyState],
    deliveries: DeliveryCounts | None,
    thresholds: Thresholds,
    *,
    expect_transient: bool,
) -> Criterion:
    """Share of accepted keys that met a transient failure and still succeeded."""
    accepted = accepted_keys(records)
    affected: list[str] = []
    for key in accepted:
        state = states.get(key)
        met_failure = (deliveries is not None and deliveries.transient.get(key, 0) > 0) or (
            state is not None and state.attempts >= 1
        )
        if met_failure:
            affected.append(key)
    recovered = [k for k in affected if k in states and states[k].status == "succeeded"]
    not_recovered = {
        k: (states[k].status if k in states else None) or "missing"
        for k in affected
        if k not in set(recovered)
    }
    ratio = len(recovered) / len(affected) if affected else None
    if ratio is None:
        passed = not expect_transient
        measured = "no accepted event met a transient failure"
        if expect_transient:
            measured += " although the downstream was told to fail: failure injection not working"
    else:
        passed = ratio >= thresholds.min_recovery_ratio
        measured = f"{len(recovered)}/{len(affected)} recovered ({ratio:.2%})"
    retries = Counter(states[k].attempts for k in affected if k in states)
    return Criterion(
        id="SC-004",
        title="events that met a transient failure recover",
        target=f"≥ {thresholds.min_recovery_ratio:.0%} of affected events end succeeded",
        measured=measured,
        passed=passed,
        details={
            "affected": len(affected),
            "recovered": len(recovered),
            "recovery_ratio": None if ratio is None else round(ratio, 6),
            "affected_share_of_accepted": round(len(affected) / len(accepted), 4)
            if accepted
            else None,
            "failed_attempts_histogram": {str(k): v for k, v in sorted(retries.items())},
            "not_recovered_examples": dict(list(not_recovered.items())[:_EXAMPLES]),
        },
    )


def evaluate(collected: Collected, thresholds: Thresholds) -> list[Criterion]:
    """SC-001..SC-004 for one run."""
    return [
        sc001_ack_latency(collected.latency, collected.records, thresholds),
        sc002_terminal_states(collected.records, collected.states, collected.drain, thresholds),
        sc003_no_duplicate_effects(
            collected.records, collected.states, collected.deliveries, collected.histories
        ),
        sc004_retry_recovery(
            collected.records,
            collected.states,
            collected.deliveries,
            thresholds,
            expect_transient=collected.expect_transient,
        ),
    ]
