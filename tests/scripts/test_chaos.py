"""``gateway chaos``: the fault schedule, the invariants on synthetic runs, and a short real run.

The invariant tests build a small consistent run by hand (:func:`clean_run`)
and break one thing each, so every check is shown to fail when it should and
to stay quiet otherwise. The slow test is the CI version of the chaos run:
the same command with every fault type, 5 s outages and a 60 s load.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from scripts.proof.chaos.driver import (
    Answer,
    CourierRetry,
    DriverResult,
    Resend,
    SentEvent,
)
from scripts.proof.chaos.invariants import check_invariants, compute_recovery
from scripts.proof.chaos.plan import ChaosOptions, plan_faults
from scripts.proof.chaos.report import (
    Collected,
    DeadLetterDoc,
    DeliveryRecord,
    FaultKind,
    FaultRecord,
    Invariant,
    ProcessedDoc,
    QueueState,
    ShipmentDoc,
    render_markdown,
)
from scripts.traffic.events import ShipmentPlanner
from shared.contracts import TERMINAL_STATUSES, EventType, decode_event
from tests.scripts.commands import run_gateway
from tests.scripts.markdown import table_rows

T0 = 1_800_000_000.0
OCCURRED = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)

# ---- the schedule ---------------------------------------------------------------------------


def test_schedule_injects_every_fault_kind_once_without_overlap_inside_the_load() -> None:
    options = ChaosOptions(duration_s=170, outage_s=30, redis_down_s=3, seed=4)
    plan = plan_faults(options)
    assert [p.kind for p in plan] == [
        FaultKind.WORKER_KILL,
        FaultKind.REDIS_RESTART,
        FaultKind.WORKER_TERM,
        FaultKind.MONGO_OUTAGE,
        FaultKind.DOWNSTREAM_OUTAGE,
    ]
    # Each fault settles before the next: 5 s, or after an outage as long as the outage.
    for before, after in zip(plan, [*plan[1:], None], strict=True):
        settle = 30 if before.kind.value.endswith("outage") else 5
        next_start = 170 if after is None else after.at_s
        assert before.at_s + before.duration_s + settle <= next_start + 0.1
    assert plan[0].at_s >= 10
    assert {p.duration_s for p in plan if p.kind.value.endswith("outage")} == {30}
    kill, term = plan[0].target, plan[2].target
    assert kill is not None
    assert term is not None
    assert kill != term


def test_schedule_is_reproducible_from_its_seed_and_varies_with_it() -> None:
    one = plan_faults(ChaosOptions(seed=1))
    assert plan_faults(ChaosOptions(seed=1)) == one
    assert plan_faults(ChaosOptions(seed=2)) != one


def test_redis_crash_adds_a_sixth_fault() -> None:
    plan = plan_faults(ChaosOptions(redis_crash=True, duration_s=200))
    assert plan[-1].kind is FaultKind.REDIS_CRASH


def test_a_run_too_short_for_its_outages_is_refused_naming_the_minimum() -> None:
    with pytest.raises(ValueError, match=r"needs at least 1\d\d s"):
        plan_faults(ChaosOptions(duration_s=60, outage_s=30))


def test_gateway_chaos_refuses_a_schedule_that_does_not_fit_before_starting_anything() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.commands.cli",
            "chaos",
            "--duration",
            "30",
            "--outage",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot hold the fault schedule" in result.stderr


# ---- the couriers ---------------------------------------------------------------------------


def test_planned_lifecycles_are_valid_events_with_rising_times_and_terminal_last() -> None:
    planner = ShipmentPlanner(random.Random(3), "t", parallel=5)
    by_shipment: dict[str, list[EventType]] = {}
    times: dict[str, list[datetime]] = {}
    for _ in range(300):
        event = decode_event(planner.next().body())
        by_shipment.setdefault(event.shipment.id, []).append(event.event_type)
        times.setdefault(event.shipment.id, []).append(event.occurred_at)
    for shipment_id, types in by_shipment.items():
        assert times[shipment_id] == sorted(times[shipment_id])
        terminal = [t.status in TERMINAL_STATUSES for t in types]
        assert not any(terminal[:-1]), (shipment_id, types)


def test_courier_backoff_doubles_up_to_its_cap_and_honours_retry_after_as_a_floor() -> None:
    retry = CourierRetry(base_s=0.5, cap_s=5.0)
    rng = random.Random(1)
    assert 0.25 <= retry.delay(1, None, rng) <= 0.5
    assert 2.0 <= retry.delay(4, None, rng) <= 4.0
    assert 2.5 <= retry.delay(10, None, rng) <= 5.0
    assert retry.delay(1, 3.0, rng) == 3.0
    assert retry.delay(1, 60.0, rng) == 5.0


# ---- the invariants -------------------------------------------------------------------------


def _event(n: int, shipment: str = "s1", *, status: int = 202) -> SentEvent:
    return SentEvent(
        key=f"chaos:e{n}",
        event_id=f"e{n}",
        event_type="shipment.picked_up" if n % 2 else "shipment.created",
        occurred_at=OCCURRED + timedelta(minutes=n),
        shipment_id=shipment,
        answers=[Answer(sent_at=T0 + n, at=T0 + n + 0.01, status=status)],
        outcome="accepted" if status == 202 else "gave_up",
    )


def fault(
    kind: FaultKind,
    target: str,
    *,
    at_s: int,
    lasting_s: int,
    details: dict[str, Any] | None = None,
) -> FaultRecord:
    """A fault planned and started ``at_s`` after ``T0``, ended ``lasting_s`` later."""
    return FaultRecord(
        kind=kind,
        target=target,
        planned_at_s=at_s,
        started_at=T0 + at_s,
        ended_at=T0 + at_s + lasting_s,
        details=details or {},
    )


def clean_run() -> Collected:
    """A consistent run: events e0..e3 on shipment s1, all succeeded and delivered once."""
    events = [_event(n) for n in range(4)]
    history = tuple(
        (e.event_id, e.event_type.removeprefix("shipment."), e.occurred_at.timestamp())
        for e in events
    )
    return Collected(
        driver=DriverResult(
            started_at=T0,
            stopped_at=T0 + 60,
            events=events,
            resends=[Resend(key="chaos:e0", answer=Answer(sent_at=T0 + 9, at=T0 + 9, status=200))],
            late_sends=0,
        ),
        faults=[
            fault(
                FaultKind.WORKER_KILL,
                "worker-1",
                at_s=20,
                lasting_s=2,
                details={"in_flight": ["chaos:e2"]},
            )
        ],
        processed={
            e.key: ProcessedDoc(status="succeeded", completed_at=T0 + n + 1)
            for n, e in enumerate(events)
        },
        shipments={"s1": ShipmentDoc(status="picked_up", last_event_id="e3", history=history)},
        dead_letters={},
        deliveries=[
            DeliveryRecord(key=e.key, status=200, received_at=T0 + n + 0.5)
            for n, e in enumerate(events)
        ],
        queue=QueueState(depth=0, jobs_left=0, in_progress=0),
        drained=True,
        drain_s=3.0,
        samples=[(T0 + s, 5) for s in range(60)],
        job_timeout_s=5.0,
    )


def verdicts(collected: Collected) -> dict[str, Invariant]:
    return {inv.name: inv for inv in check_invariants(collected)}


def failing(collected: Collected) -> set[str]:
    return {name for name, inv in verdicts(collected).items() if not inv.passed}


def test_a_consistent_run_passes_every_invariant() -> None:
    results = verdicts(clean_run())
    assert set(results) == {
        "none_lost",
        "terminal",
        "applied_once",
        "projection_consistent",
        "delivered",
        "duplicate_deliveries_explained",
        "dead_letters_explained",
        "queue_drained",
        "duplicates_answered",
        "answers_expected",
        "processes_survived",
    }
    assert all(inv.passed for inv in results.values()), results


def test_an_accepted_key_missing_from_mongodb_is_lost() -> None:
    run = clean_run()
    del run.processed["chaos:e1"]
    assert "none_lost" in failing(run)
    assert verdicts(run)["none_lost"].examples == ["chaos:e1: accepted, not in processed_events"]


def test_an_accepted_key_still_retrying_after_the_drain_is_not_terminal() -> None:
    run = clean_run()
    run.processed["chaos:e1"] = ProcessedDoc(status="retrying")
    assert failing(run) >= {"terminal"}


def test_a_key_that_never_got_a_2xx_is_not_the_gateways_responsibility() -> None:
    run = clean_run()
    run.driver.events.append(_event(9, status=503))
    assert failing(run) == set()


def test_an_event_twice_in_its_shipments_history_is_applied_twice() -> None:
    run = clean_run()
    doc = run.shipments["s1"]
    run.shipments["s1"] = ShipmentDoc(
        status=doc.status, last_event_id=doc.last_event_id, history=(doc.history[0], *doc.history)
    )
    assert failing(run) == {"applied_once"}


def test_a_succeeded_event_missing_from_history_or_an_unknown_one_in_it_fails() -> None:
    run = clean_run()
    doc = run.shipments["s1"]
    run.shipments["s1"] = ShipmentDoc(
        status=doc.status,
        last_event_id=doc.last_event_id,
        history=(("ghost", "created", 0.0), *doc.history[1:]),
    )
    examples = verdicts(run)["applied_once"].examples
    assert any("chaos:e0: succeeded but not in" in e for e in examples)
    assert any("ghost, which nobody sent" in e for e in examples)


def test_a_shipment_not_showing_its_newest_event_is_inconsistent() -> None:
    run = clean_run()
    doc = run.shipments["s1"]
    run.shipments["s1"] = ShipmentDoc(status="created", last_event_id="e2", history=doc.history)
    assert failing(run) == {"projection_consistent"}


def test_a_succeeded_key_without_a_2xx_delivery_was_not_delivered() -> None:
    run = clean_run()
    run.deliveries[1] = DeliveryRecord(key="chaos:e1", status=503, received_at=T0 + 1.5)
    assert failing(run) == {"delivered"}


def test_a_second_delivery_is_explained_by_a_worker_killed_after_the_first() -> None:
    run = clean_run()
    run.deliveries.append(DeliveryRecord(key="chaos:e2", status=200, received_at=T0 + 40))
    # e2's first delivery (T0 + 2.5) is not near the kill at T0 + 20: unexplained.
    assert failing(run) == {"duplicate_deliveries_explained"}
    run.deliveries[2] = DeliveryRecord(key="chaos:e2", status=200, received_at=T0 + 19.9)
    result = verdicts(run)["duplicate_deliveries_explained"]
    assert result.passed
    assert result.counts == {"keys_delivered_twice_or_more": 1, "worker_kill": 1}


def test_a_second_delivery_is_explained_by_a_failure_recorded_after_the_first() -> None:
    run = clean_run()
    run.deliveries.append(DeliveryRecord(key="chaos:e1", status=200, received_at=T0 + 9))
    run.processed["chaos:e1"] = ProcessedDoc(
        status="succeeded", completed_at=T0 + 9, attempt_log=((T0 + 5, "job_timeout"),)
    )
    assert verdicts(run)["duplicate_deliveries_explained"].passed


def test_a_second_delivery_is_explained_by_a_run_the_workers_logged_failing_after_the_first() -> (
    None
):
    run = clean_run()
    run.deliveries.append(DeliveryRecord(key="chaos:e1", status=200, received_at=T0 + 9))
    run.job_failures = {"chaos:e1": [(T0 + 0.5, "store_unavailable")]}
    assert failing(run) == {"duplicate_deliveries_explained"}  # that failure came before it
    run.job_failures["chaos:e1"].append((T0 + 1.6, "store_unavailable"))
    result = verdicts(run)["duplicate_deliveries_explained"]
    assert result.passed
    assert result.counts["failed_after_delivery:store_unavailable"] == 1


def test_an_outage_window_alone_does_not_explain_a_second_delivery() -> None:
    run = clean_run()
    run.faults = [
        fault(kind, "x", at_s=1, lasting_s=2)
        for kind in (FaultKind.REDIS_RESTART, FaultKind.MONGO_OUTAGE, FaultKind.DOWNSTREAM_OUTAGE)
    ]
    run.deliveries.append(DeliveryRecord(key="chaos:e2", status=200, received_at=T0 + 30))
    assert failing(run) == {"duplicate_deliveries_explained"}


def test_failed_and_cancelled_runs_are_read_from_the_workers_json_logs(tmp_path: Path) -> None:
    from scripts.proof.chaos.collect import job_failures

    log = tmp_path / "worker-1.log"
    lines = [
        {
            "event": "job.succeeded",
            "idempotency_key": "chaos:a",
            "timestamp": "2026-11-22T10:00:00Z",
        },
        {
            "event": "job.retrying",
            "code": "store_unavailable",
            "idempotency_key": "chaos:a",
            "timestamp": "2026-11-22T10:00:01.500000Z",
        },
        {
            "event": "job.cancelled",
            "idempotency_key": "chaos:b",
            "timestamp": "2026-11-22T10:00:02Z",
        },
    ]
    log.write_bytes(b"\n".join(msgspec.json.encode(line) for line in lines) + b"\nnot json\n")
    base = datetime(2026, 11, 22, 10, 0, tzinfo=UTC).timestamp()
    assert job_failures([log]) == {
        "chaos:a": [(base + 1.5, "store_unavailable")],
        "chaos:b": [(base + 2, "job.cancelled")],
    }


def _dead_letter(run: Collected, letter: DeadLetterDoc) -> None:
    run.processed["chaos:e3"] = ProcessedDoc(status="dead_lettered", completed_at=T0 + 25)
    run.dead_letters["chaos:e3"] = letter
    run.deliveries = [d for d in run.deliveries if d.key != "chaos:e3"]


def test_a_dead_letter_of_retries_exhausted_within_a_fault_window_is_explained() -> None:
    run = clean_run()
    attempts = tuple((T0 + 16 + n, "downstream_unreachable") for n in range(5))
    _dead_letter(
        run,
        DeadLetterDoc(reason="retries_exhausted", code="downstream_unreachable", attempts=attempts),
    )
    result = verdicts(run)["dead_letters_explained"]
    assert result.passed
    assert result.counts == {"retries_exhausted/downstream_unreachable": 1}


def test_a_permanent_dead_letter_or_one_outside_every_fault_window_is_a_violation() -> None:
    run = clean_run()
    attempts = ((T0 + 21, "invalid_transition"),)
    _dead_letter(
        run, DeadLetterDoc(reason="permanent", code="invalid_transition", attempts=attempts)
    )
    assert failing(run) == {"dead_letters_explained"}
    run = clean_run()
    attempts = ((T0 + 40, "downstream_unavailable"),)
    _dead_letter(
        run,
        DeadLetterDoc(reason="retries_exhausted", code="downstream_unavailable", attempts=attempts),
    )
    assert failing(run) == {"dead_letters_explained"}


def test_a_dead_lettered_key_without_its_dead_letter_is_a_violation() -> None:
    run = clean_run()
    run.processed["chaos:e3"] = ProcessedDoc(status="dead_lettered")
    assert "dead_letters_explained" in failing(run)


def test_leftover_jobs_or_a_job_failed_by_arq_mean_the_queue_did_not_drain() -> None:
    run = clean_run()
    run.queue = QueueState(depth=0, jobs_left=0, in_progress=0, arq_failures={"chaos:e1": "x"})
    assert failing(run) == {"queue_drained"}
    run = clean_run()
    run.drained = False
    run.queue = QueueState(depth=3, jobs_left=3, in_progress=1)
    assert len(verdicts(run)["queue_drained"].examples) == 4


def test_a_repeat_of_an_accepted_request_answered_202_means_the_queue_forgot_it() -> None:
    run = clean_run()
    run.driver.resends.append(
        Resend(key="chaos:e1", answer=Answer(sent_at=T0 + 30, at=T0 + 30, status=202))
    )
    assert failing(run) == {"duplicates_answered"}


def test_any_answer_but_202_200_and_503_is_unexpected() -> None:
    run = clean_run()
    run.driver.events[0].answers.insert(0, Answer(sent_at=T0, at=T0, status=500))
    assert failing(run) == {"answers_expected"}
    run = clean_run()
    run.driver.events[0].answers.insert(0, Answer(sent_at=T0, at=T0, error="ConnectError"))
    assert failing(run) == set()


def test_a_process_dying_by_itself_or_a_worker_failing_its_sigterm_is_a_violation() -> None:
    run = clean_run()
    run.unexpected_exits = ["worker-2 exited 1 at [ 30.0 s]"]
    assert failing(run) == {"processes_survived"}
    run = clean_run()
    run.faults.append(
        fault(FaultKind.WORKER_TERM, "worker-2", at_s=40, lasting_s=4, details={"exit_code": 1})
    )
    assert failing(run) == {"processes_survived"}


# ---- recovery and the report ----------------------------------------------------------------


def test_recovery_times_are_measured_from_the_collected_records() -> None:
    run = clean_run()
    run.faults.append(fault(FaultKind.REDIS_RESTART, "redis", at_s=30, lasting_s=3))
    run.driver.events.append(
        SentEvent(
            key="chaos:e7",
            event_id="e7",
            event_type="shipment.created",
            occurred_at=OCCURRED,
            shipment_id="s2",
            answers=[
                Answer(sent_at=T0 + 31, at=T0 + 31, status=503),
                Answer(sent_at=T0 + 34, at=T0 + 34.5, status=202),
            ],
            outcome="accepted",
        )
    )
    run.processed["chaos:e7"] = ProcessedDoc(status="succeeded", completed_at=T0 + 36)
    run.processed["chaos:e2"] = ProcessedDoc(status="succeeded", completed_at=T0 + 35)
    run.samples = [(T0 + s, 5 if s < 30 or s > 40 else 50) for s in range(60)]
    compute_recovery(run)
    kill, restart = run.faults
    assert kill.recovery == {"backlog_s": 0.0, "in_flight_done_s": 15.0}
    assert restart.recovery == {"backlog_s": 8.0, "api_2xx_s": 1.5, "first_completion_s": 2.0}


def test_the_markdown_report_shows_the_verdict_faults_and_failing_examples() -> None:
    from scripts.proof.chaos.report import Report, load_summary, timeline

    run = clean_run()
    del run.processed["chaos:e1"]
    invariants = check_invariants(run)
    report = Report(
        passed=False,
        started="2026-11-22T10:00:00Z",
        command="gateway chaos",
        config={"rate": 25, "load_started_at": T0},
        environment={"store": "test"},
        load=load_summary(run.driver),
        faults=run.faults,
        invariants=invariants,
        drain_s=3.0,
        drained=True,
        timeline=timeline(run),
    )
    text = render_markdown(report)
    assert text.startswith("# Chaos run — FAIL")
    assert ["1", "worker_kill", "worker-1", "+20.0 s", "+22.0 s"] in [
        row[:5] for row in table_rows(text)
    ]
    assert "### none_lost: 1 violations" in text
    assert "- chaos:e1: accepted, not in processed_events" in text
    assert msgspec.json.decode(msgspec.json.encode(report))["passed"] is False


# ---- the real thing, short ------------------------------------------------------------------


def passing_chaos_run(output: Path, *args: str) -> dict[str, Any]:
    """Run ``gateway chaos ARGS`` (a 60 s run) into ``output``; it must pass every invariant.

    Its report.
    """
    options = ["--duration", "60", *args, "--rate", "20"]
    options += ["--output", str(output), "--drain-timeout", "150", "--seed", "3"]
    result = run_gateway("chaos", options, timeout=380)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    report: dict[str, Any] = json.loads((output / "report.json").read_text())
    assert report["passed"] is True
    assert all(inv["passed"] for inv in report["invariants"])
    return report


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_short_chaos_run_with_every_fault_kind_keeps_every_invariant(tmp_path: Path) -> None:
    output = tmp_path / "chaos"
    report = passing_chaos_run(output, "--outage", "5", "--redis-down", "2")
    assert {f["kind"] for f in report["faults"]} == {kind.value for kind in FaultKind} - {
        "redis_crash",
        "redis_primary_kill",
    }
    assert report["load"]["accepted_202"] > 500
    kill = next(f for f in report["faults"] if f["kind"] == "worker_kill")
    assert kill["details"]["in_flight_jobs"] >= 1  # killed mid-job
    assert kill["recovery"]["in_flight_done_s"] is not None
    assert "# Chaos run — PASS" in (output / "report.md").read_text()
    assert (output / "logs" / "worker-1.log").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_short_sentinel_chaos_run_follows_a_primary_kill_losing_nothing_accepted(
    tmp_path: Path,
) -> None:
    report = passing_chaos_run(
        tmp_path / "chaos",
        "--redis-topology",
        "sentinel",
        "--outage",
        "4",
        "--redis-down",
        "2",
        "--set",
        "GATEWAY_ACK_REPLICAS=1",
    )
    kinds = {f["kind"] for f in report["faults"]}
    assert kinds == {kind.value for kind in FaultKind} - {"redis_crash"}
    kill = next(f for f in report["faults"] if f["kind"] == "redis_primary_kill")
    assert kill["details"]["new_primary_port"] != int(kill["target"].rpartition(":")[2])
    assert kill["recovery"]["first_2xx_after_kill_s"] is not None
    assert report["config"]["ack_replicas"] == 1


def test_a_backlog_not_cleared_before_the_next_fault_is_reported_as_such() -> None:
    run = clean_run()
    outage = fault(FaultKind.MONGO_OUTAGE, "mongodb", at_s=5, lasting_s=5)
    run.faults.insert(0, outage)  # the kill at T0 + 20 comes next
    run.samples = [(T0 + s, 5 if s < 5 else 80) for s in range(60)]
    compute_recovery(run)
    assert outage.recovery["backlog_s"] is None
    assert outage.details["backlog"] == (
        "80 jobs queued (pre-fault 5) when the next fault began 10 s later"
    )
