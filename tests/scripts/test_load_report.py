"""The load test's verdicts SC-001..SC-004, computed from small synthetic runs."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from scripts.proof.loadtest.criteria import (
    evaluate,
    sc001_ack_latency,
    sc002_terminal_states,
    sc003_no_duplicate_effects,
    sc004_retry_recovery,
)
from scripts.proof.loadtest.records import SentRecord
from scripts.proof.loadtest.report import (
    Collected,
    DeliveryCounts,
    LatencySummary,
    Report,
    Thresholds,
    count_deliveries,
    latency_from_locust,
    render_markdown,
    request_mix,
)
from scripts.traffic.events import Kind
from scripts.traffic.observe import Drain, KeyState
from tests.scripts.markdown import table_rows

SPEC = Thresholds()
DRAINED = Drain(drained=True, seconds=1.5, queue_left=0, non_terminal_left=0)


def sent(
    event: str, status: int = 202, *, shipment: str = "shp_1", kind: Kind = "new"
) -> SentRecord:
    return SentRecord(
        key=f"acme:{event}", shipment=f"acme:{shipment}", status=status, kind=kind, ms=5.0
    )


def latency(p95: float = 20.0, *, requests: int = 100, failures: int = 0) -> LatencySummary:
    return LatencySummary(
        requests=requests,
        failures=failures,
        p50_ms=5.0,
        p95_ms=p95,
        p99_ms=p95 + 10,
        max_ms=p95 + 20,
        mean_ms=7.0,
        duration_s=10.0,
    )


def deliveries(ok: dict[str, int], transient: dict[str, int] | None = None) -> DeliveryCounts:
    transient = transient or {}
    keys = set(ok) | set(transient)
    total = {k: ok.get(k, 0) + transient.get(k, 0) for k in keys}
    return DeliveryCounts(total=total, ok=ok, transient=transient)


def succeeded(attempts: int = 0) -> KeyState:
    return KeyState(status="succeeded", attempts=attempts)


# ---------------------------------------------------------------- inputs


def test_locust_statistics_merge_into_locusts_own_percentiles() -> None:
    entries: list[dict[str, Any]] = [
        {
            "num_requests": 60,
            "num_failures": 1,
            "total_response_time": 600,
            "max_response_time": 90.5,
            "response_times": {"5": 50, "10": 10},
            "start_time": 100.0,
            "last_request_timestamp": 110.0,
        },
        {
            "num_requests": 40,
            "num_failures": 0,
            "total_response_time": 1400,
            "max_response_time": 120.0,
            "response_times": {"10": 30, "90": 9, "120": 1},
            "start_time": 101.0,
            "last_request_timestamp": 120.0,
        },
    ]
    summary = latency_from_locust(entries)
    assert (summary.requests, summary.failures) == (100, 1)
    # 50 at 5 ms, 40 at 10 ms, 9 at 90 ms, 1 at 120 ms: the values Locust's own
    # calculate_response_time_percentile gives for this histogram.
    assert (summary.p50_ms, summary.p95_ms, summary.p99_ms) == (10.0, 90.0, 120.0)
    assert summary.max_ms == 120.0
    assert summary.mean_ms == 20.0
    assert summary.duration_s == 20.0
    assert summary.requests_per_s == 5.0


def test_deliveries_answered_5xx_408_425_429_or_cut_off_count_as_transient_failures() -> None:
    counts = count_deliveries(
        [
            ("k1", 503, False),
            ("k1", 200, False),
            ("k2", 429, False),
            ("k2", 408, False),
            ("k2", 425, False),
            ("k3", None, True),
            ("k4", 400, False),
            ("k4", 401, False),
            (None, 200, False),
        ]
    )
    assert counts.total == {"k1": 2, "k2": 3, "k3": 1, "k4": 2}
    assert counts.ok == {"k1": 1}
    assert counts.transient == {"k1": 1, "k2": 3, "k3": 1}


# ---------------------------------------------------------------- SC-001


def test_sc001_passes_with_p95_under_the_limit_no_failures_and_no_5xx() -> None:
    verdict = sc001_ack_latency(latency(99.0), [sent("e1"), sent("e1", 200)], SPEC)
    assert verdict.passed
    assert verdict.details["statuses"] == {"200": 1, "202": 1}


def test_sc001_misses_when_p95_reaches_the_limit() -> None:
    assert not sc001_ack_latency(latency(100.0), [sent("e1")], SPEC).passed


def test_sc001_misses_on_a_single_5xx_even_within_the_error_budget() -> None:
    records = [sent("e1"), sent("e2", 503)]
    lenient = Thresholds(max_error_rate=0.5)
    verdict = sc001_ack_latency(latency(failures=1), records, lenient)
    assert not verdict.passed
    assert verdict.details["server_errors"] == 1


def test_sc001_misses_when_the_error_rate_exceeds_the_budget() -> None:
    records = [sent("e1"), sent("e2", 401)]
    assert not sc001_ack_latency(latency(failures=1), records, SPEC).passed
    assert sc001_ack_latency(latency(failures=1), records, Thresholds(max_error_rate=0.02)).passed


def test_sc001_misses_when_nothing_was_sent() -> None:
    assert not sc001_ack_latency(latency(requests=0), [], SPEC).passed


# ---------------------------------------------------------------- SC-002


def test_sc002_passes_when_every_accepted_key_succeeded_or_was_dead_lettered() -> None:
    records = [sent("e1"), sent("e2"), sent("e1", 200, kind="resend")]
    states = {"acme:e1": succeeded(), "acme:e2": KeyState(status="dead_lettered", attempts=6)}
    verdict = sc002_terminal_states(records, states, DRAINED, SPEC)
    assert verdict.passed
    assert verdict.details["by_status"] == {"dead_lettered": 1, "succeeded": 1}


@pytest.mark.parametrize("state", [KeyState(status="retrying", attempts=2), None])
def test_sc002_misses_when_an_accepted_key_is_still_in_flight_or_unknown(
    state: KeyState | None,
) -> None:
    states = {"acme:e1": succeeded()}
    if state is not None:
        states["acme:e2"] = state
    verdict = sc002_terminal_states([sent("e1"), sent("e2")], states, DRAINED, SPEC)
    assert not verdict.passed
    assert list(verdict.details["not_terminal_examples"]) == ["acme:e2"]


def test_sc002_ignores_keys_that_were_never_acknowledged_202() -> None:
    records = [sent("e1"), sent("e2", 422), sent("e3", 0)]
    assert sc002_terminal_states(records, {"acme:e1": succeeded()}, DRAINED, SPEC).passed


# ---------------------------------------------------------------- SC-003


def test_sc003_passes_with_one_successful_delivery_and_one_history_entry_per_key() -> None:
    records = [sent("e1"), sent("e2"), sent("e1", 200, kind="resend")]
    states = {"acme:e1": succeeded(attempts=2), "acme:e2": succeeded()}
    # e1 was delivered three times, two answered 503: still one effect.
    counts = deliveries({"acme:e1": 1, "acme:e2": 1}, {"acme:e1": 2})
    verdict = sc003_no_duplicate_effects(records, states, counts, {"acme:shp_1": ["e1", "e2"]})
    assert verdict.passed
    assert verdict.details["deliveries_total"] == 4


def test_sc003_misses_when_a_key_is_delivered_successfully_twice() -> None:
    verdict = sc003_no_duplicate_effects(
        [sent("e1")], {"acme:e1": succeeded()}, deliveries({"acme:e1": 2}), {"acme:shp_1": ["e1"]}
    )
    assert not verdict.passed
    assert verdict.details["examples"] == {"delivered_more_than_once": ["acme:e1"]}


def test_sc003_misses_when_a_succeeded_key_was_never_delivered() -> None:
    verdict = sc003_no_duplicate_effects(
        [sent("e1")], {"acme:e1": succeeded()}, deliveries({}), {"acme:shp_1": ["e1"]}
    )
    assert verdict.details["counts"]["succeeded_not_delivered"] == 1
    assert not verdict.passed


def test_sc003_misses_when_a_dead_lettered_key_was_delivered() -> None:
    states = {"acme:e1": KeyState(status="dead_lettered", attempts=6)}
    verdict = sc003_no_duplicate_effects(
        [sent("e1")], states, deliveries({"acme:e1": 1}), {"acme:shp_1": ["e1"]}
    )
    assert verdict.details["counts"]["dead_lettered_but_delivered"] == 1
    assert not verdict.passed


def test_sc003_accepts_a_dead_lettered_key_that_was_never_applied_or_delivered() -> None:
    states = {"acme:e1": KeyState(status="dead_lettered", attempts=1)}
    verdict = sc003_no_duplicate_effects([sent("e1")], states, deliveries({}), {})
    assert verdict.passed


def test_sc003_misses_when_an_event_is_applied_twice_to_its_shipment() -> None:
    verdict = sc003_no_duplicate_effects(
        [sent("e1")],
        {"acme:e1": succeeded()},
        deliveries({"acme:e1": 1}),
        {"acme:shp_1": ["e1", "e1"]},
    )
    assert verdict.details["counts"]["applied_more_than_once"] == 1
    assert not verdict.passed


def test_sc003_misses_when_a_succeeded_event_is_missing_from_its_shipment_history() -> None:
    verdict = sc003_no_duplicate_effects(
        [sent("e1")], {"acme:e1": succeeded()}, deliveries({"acme:e1": 1}), {"acme:shp_1": []}
    )
    assert verdict.details["counts"]["succeeded_not_applied"] == 1
    assert not verdict.passed


def test_sc003_misses_when_the_api_acknowledges_one_key_202_twice() -> None:
    records = [sent("e1"), sent("e1", kind="resend")]
    verdict = sc003_no_duplicate_effects(
        records, {"acme:e1": succeeded()}, deliveries({"acme:e1": 1}), {"acme:shp_1": ["e1"]}
    )
    assert verdict.details["counts"]["accepted_twice"] == 1
    assert not verdict.passed


def test_sc003_without_a_mock_downstream_checks_histories_only_and_says_so() -> None:
    verdict = sc003_no_duplicate_effects(
        [sent("e1")], {"acme:e1": succeeded()}, None, {"acme:shp_1": ["e1"]}
    )
    assert verdict.passed
    assert verdict.details["deliveries_checked"] is False
    assert "not checked" in verdict.measured


# ---------------------------------------------------------------- SC-004


def test_sc004_counts_keys_hit_by_a_transient_delivery_or_a_failed_attempt_as_affected() -> None:
    records = [sent(f"e{n}") for n in range(1, 5)]
    states = {
        "acme:e1": succeeded(attempts=1),  # 503 seen by the mock
        "acme:e2": succeeded(attempts=1),  # failed attempt recorded (e.g. a timeout)
        "acme:e3": succeeded(),  # never failed
        "acme:e4": KeyState(status="dead_lettered", attempts=6),  # exhausted
    }
    counts = deliveries({"acme:e1": 1, "acme:e2": 1, "acme:e3": 1}, {"acme:e1": 1, "acme:e4": 6})
    verdict = sc004_retry_recovery(records, states, counts, SPEC, expect_transient=True)
    assert (verdict.details["affected"], verdict.details["recovered"]) == (3, 2)
    assert verdict.details["not_recovered_examples"] == {"acme:e4": "dead_lettered"}
    assert not verdict.passed
    assert sc004_retry_recovery(
        records, states, counts, Thresholds(min_recovery_ratio=0.6), expect_transient=True
    ).passed


def test_sc004_passes_at_exactly_the_minimum_recovery_ratio() -> None:
    records = [sent(f"e{n}") for n in range(100)]
    states = {f"acme:e{n}": succeeded(attempts=1) for n in range(99)}
    states["acme:e99"] = KeyState(status="dead_lettered", attempts=6)
    verdict = sc004_retry_recovery(records, states, None, SPEC, expect_transient=True)
    assert verdict.details["recovery_ratio"] == 0.99
    assert verdict.passed


def test_sc004_misses_when_failures_were_injected_but_no_event_met_one() -> None:
    records = [sent("e1")]
    states = {"acme:e1": succeeded()}
    counts = deliveries({"acme:e1": 1})
    assert not sc004_retry_recovery(records, states, counts, SPEC, expect_transient=True).passed
    assert sc004_retry_recovery(records, states, counts, SPEC, expect_transient=False).passed


# ---------------------------------------------------------------- the report


def passing_run() -> Collected:
    records = [sent("e1"), sent("e2", shipment="shp_2"), sent("e1", 200, kind="resend")]
    return Collected(
        latency=latency(),
        records=records,
        states={"acme:e1": succeeded(attempts=1), "acme:e2": succeeded()},
        deliveries=deliveries({"acme:e1": 1, "acme:e2": 1}, {"acme:e1": 1}),
        histories={"acme:shp_1": ["e1"], "acme:shp_2": ["e2"]},
        drain=DRAINED,
        expect_transient=True,
    )


def test_a_clean_run_passes_all_four_criteria() -> None:
    criteria = evaluate(passing_run(), SPEC)
    assert [c.id for c in criteria] == ["SC-001", "SC-002", "SC-003", "SC-004"]
    assert all(c.passed for c in criteria)


def test_report_markdown_shows_a_verdict_per_criterion_and_json_round_trips() -> None:
    run = msgspec.structs.replace(passing_run(), latency=latency(150.0))
    criteria = evaluate(run, SPEC)
    report = Report(
        passed=all(c.passed for c in criteria),
        criteria=criteria,
        run={"command": "gateway loadtest --users 3", "store": "mongoeco", "stack": {"workers": 2}},
        requests=request_mix(run.records),
        latency=run.latency,
        drain=run.drain,
    )
    text = render_markdown(report)
    assert text.startswith("# Load test report — MISS")
    verdicts = {row[0]: row[3] for row in table_rows(text) if row[0].startswith("SC-")}
    assert list(verdicts) == [f"{c.id} {c.title}" for c in criteria]
    assert verdicts["SC-001 ack latency and errors"] == "**MISS**"
    assert list(verdicts.values()).count("PASS") == 3
    assert "`gateway loadtest --users 3`" in text
    decoded = msgspec.json.decode(msgspec.json.encode(report))
    assert decoded["passed"] is False
    assert decoded["requests"]["by_kind"] == {"new": {"202": 2}, "resend": {"200": 1}}
