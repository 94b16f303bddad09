"""One job run, in process: steps, outcomes, retries and dead letters, with real Mongo and HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
from arq.worker import Retry
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from gateway_worker.backoff import backoff_bound
from gateway_worker.jobs import EventProcessor, JobResult
from gateway_worker.metrics import WorkerMetrics
from scripts.harness.mock_downstream import MockDownstreamClient
from scripts.proof.probes import CommandCounter
from shared.contracts import CourierEvent, EventType, QueuedEvent, ReplayRef
from shared.settings import Settings
from shared.storage.dead_letters import DeadLetterDocument
from shared.storage.events import ProcessedEvents
from shared.storage.mongo import DEAD_LETTER_EVENTS, Document, open_mongo
from shared.storage.shipments import Shipments
from tests.factories import T0, Clock, make_event, payload
from tests.plugins.worker import stored_letter, stored_record, stored_shipment

MakeProcessor = Callable[..., EventProcessor]
MOCK: Any = object()
"""Deliver to the mock downstream (the default of :func:`build`)."""


class Raising:
    """A deliverer that fails with ``exc`` every time."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    async def deliver(self, queued: QueuedEvent, status: str, event: CourierEvent) -> None:
        self.calls += 1
        raise self.exc


class Blocking:
    """A deliverer that never answers until released."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def deliver(self, queued: QueuedEvent, status: str, event: CourierEvent) -> None:
        self.entered.set()
        await self.release.wait()


async def run_to_end(
    processor: EventProcessor, queued: QueuedEvent, job_id: str | None = None, limit: int = 20
) -> tuple[JobResult, list[Retry]]:
    """Run a job again after each Retry (as arq would, without waiting); its result and retries."""
    retries: list[Retry] = []
    for job_try in range(1, limit + 1):
        try:
            return await processor.process(
                job_id or queued.idempotency_key, job_try, payload(queued)
            ), retries
        except Retry as retry:
            retries.append(retry)
    raise AssertionError(f"job still retrying after {limit} runs")


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@dataclass
class Built:
    """A processor, the settings it runs with and the metrics it counts in."""

    processor: EventProcessor
    settings: Settings
    metrics: WorkerMetrics

    def sample(self, name: str, **labels: str) -> float:
        return sample(self.metrics, name, **labels)


Build = Callable[..., Built]


@pytest.fixture
def build(
    worker_settings: Callable[..., Settings], make_processor: MakeProcessor, downstream_url: str
) -> Build:
    """Build a processor with the fast settings and ``overrides``, counting in its own metrics.

    ``downstream``: the mock downstream unless given (``None``: no delivery step).
    """

    def make(
        *,
        downstream: Any = MOCK,
        db: AsyncDatabase[Document] | None = None,
        clock: Callable[[], datetime] | None = None,
        **overrides: Any,
    ) -> Built:
        settings = worker_settings(**overrides)
        metrics = WorkerMetrics()
        deliverer = downstream_url if downstream is MOCK else downstream
        processor = make_processor(
            settings, downstream=deliverer, db=db, clock=clock, metrics=metrics
        )
        return Built(processor, settings, metrics)

    return make


async def test_happy_path_applies_delivers_marks_in_three_mongo_round_trips(
    build: Build,
    mongo_url: str,
    mongo_db: AsyncDatabase[Document],
    downstream: MockDownstreamClient,
) -> None:
    listener = CommandCounter()
    client: AsyncMongoClient[Document] = open_mongo(mongo_url, event_listeners=[listener])
    try:
        built = build(db=client[mongo_db.name])
        queued = make_event("evt_1", EventType.PICKED_UP)
        listener.commands.clear()
        assert await built.processor.process(queued.idempotency_key, 1, payload(queued)) == (
            "succeeded"
        )
        assert listener.commands == ["findAndModify", "findAndModify", "update"]
    finally:
        await client.close()

    record = await stored_record(mongo_db, queued.idempotency_key)
    assert (record.status, record.attempts) == ("succeeded", 0)
    assert (record.lease_until, record.lease_owner, record.lease_job_id) == (None, None, None)
    assert record.completed_at is not None
    assert (await stored_shipment(mongo_db))["status"] == "picked_up"
    log = await downstream.deliveries()
    assert log.ok == {"acme:evt_1": 1}
    delivery = log.deliveries[0]
    assert delivery.signature_ok is True
    assert delivery.body["idempotency_key"] == "acme:evt_1"
    assert delivery.body["status"] == "picked_up"
    assert delivery.body["event_type"] == "shipment.picked_up"
    assert delivery.body["shipment"] == {
        "id": "shp_1",
        "order_id": "ord_1",
        "tracking_number": "1Z999",
    }
    assert built.sample("gateway_worker_jobs_total", outcome="succeeded") == 1


async def test_second_job_of_a_finished_key_is_a_counted_duplicate(
    build: Build, downstream: MockDownstreamClient
) -> None:
    built = build()
    queued = make_event()
    assert await built.processor.process(queued.idempotency_key, 1, payload(queued)) == "succeeded"
    assert await built.processor.process("resubmitted-later", 1, payload(queued)) == "duplicate"
    assert (await downstream.deliveries()).counts == {"acme:evt_1": 1}
    assert built.sample("gateway_events_duplicate_total", source="acme", stage="worker") == 1
    assert built.sample("gateway_worker_jobs_total", outcome="duplicate") == 1


async def test_job_behind_another_jobs_live_lease_is_deferred_not_counted(
    build: Build, mongo_db: AsyncDatabase[Document]
) -> None:
    clock = Clock()
    await ProcessedEvents(mongo_db).claim(
        "acme:evt_1",
        source="acme",
        event_id="evt_1",
        job_id="first",
        owner="w1",
        token="t",
        now=T0,
        lease_s=30.0,
    )
    clock.advance(10)
    built = build(downstream=None, clock=clock, lease_s=30.0)
    with pytest.raises(Retry) as retry:
        await built.processor.process("second", 1, payload(make_event()))
    defer_ms = retry.value.defer_score
    assert defer_ms is not None
    assert 20_000 <= defer_ms <= 23_000
    record = await stored_record(mongo_db, "acme:evt_1")
    assert record.attempts == 0
    assert record.lease_job_id == "first"
    assert built.sample("gateway_worker_jobs_total", outcome="deferred") == 1


@pytest.mark.parametrize(
    ("second", "code"),
    [
        (
            make_event("evt_2", EventType.IN_TRANSIT, occurred_at=T0 + timedelta(hours=1)),
            "invalid_transition",
        ),
        (
            make_event(
                "evt_2",
                EventType.IN_TRANSIT,
                occurred_at=T0 + timedelta(hours=1),
                order_id="ord_other",
            ),
            "order_mismatch",
        ),
    ],
    ids=["invalid_transition", "order_mismatch"],
)
async def test_rejected_event_is_dead_lettered_after_one_attempt_without_delivery(
    build: Build,
    mongo_db: AsyncDatabase[Document],
    downstream: MockDownstreamClient,
    second: QueuedEvent,
    code: str,
) -> None:
    built = build()
    first = make_event("evt_1", EventType.DELIVERED)
    assert await built.processor.process(first.idempotency_key, 1, payload(first)) == "succeeded"
    shipment_before = await Shipments(mongo_db).get("acme", "shp_1")

    result, retries = await run_to_end(built.processor, second)
    assert (result, retries) == ("dead_lettered", [])
    assert await Shipments(mongo_db).get("acme", "shp_1") == shipment_before
    assert (await downstream.deliveries()).counts == {"acme:evt_1": 1}
    record = await stored_record(mongo_db, "acme:evt_2")
    assert record.last_error is not None
    assert (record.status, record.attempts, record.last_error.code) == (
        "dead_lettered",
        1,
        code,
    )
    letter = await stored_letter(mongo_db, "acme:evt_2")
    assert (letter.reason, letter.error.code, letter.status) == ("permanent", code, "pending")
    assert [a.attempt for a in letter.attempts] == [1]
    assert letter.attempts[0].transient is False
    assert (letter.event_id, letter.event_type) == ("evt_2", second.event.event_type.value)
    assert letter.body == second.body
    assert (letter.source, letter.shipment_id) == ("acme", "shp_1")
    assert built.sample("gateway_worker_dead_letters_total", reason="permanent", code=code) == 1


async def test_downstream_400_is_dead_lettered_after_one_attempt(
    build: Build, mongo_db: AsyncDatabase[Document], downstream: MockDownstreamClient
) -> None:
    await downstream.control(always={"acme:evt_1": 400})
    result, retries = await run_to_end(build().processor, make_event())
    assert (result, retries) == ("dead_lettered", [])
    letter = await stored_letter(mongo_db, "acme:evt_1")
    assert (letter.reason, letter.error.code) == ("permanent", "downstream_rejected")
    assert (await downstream.deliveries()).counts == {"acme:evt_1": 1}


async def test_transient_failures_are_retried_with_jittered_backoff_then_succeed(
    build: Build, mongo_db: AsyncDatabase[Document], downstream: MockDownstreamClient
) -> None:
    await downstream.control(fail_first=2)
    built = build()
    settings = built.settings
    result, retries = await run_to_end(built.processor, make_event())
    assert result == "succeeded"
    assert len(retries) == 2
    record = await stored_record(mongo_db, "acme:evt_1")
    assert (record.status, record.attempts) == ("succeeded", 2)
    for number, (entry, retry) in enumerate(zip(record.attempt_log, retries, strict=True), 1):
        bound_ms = 1000 * backoff_bound(
            number,
            base_s=settings.backoff_base_s,
            multiplier=settings.backoff_multiplier,
            cap_s=settings.backoff_cap_s,
        )
        assert entry.attempt == number
        assert entry.code == "downstream_unavailable"
        assert entry.transient is True
        assert retry.defer_score is not None
        assert 0 <= retry.defer_score <= round(bound_ms)
        assert entry.retry_in_ms == retry.defer_score
    assert (await downstream.deliveries()).ok == {"acme:evt_1": 1}


async def test_retry_after_from_the_downstream_is_a_floor_on_the_delay(
    build: Build, downstream: MockDownstreamClient
) -> None:
    await downstream.control(fail_first=1, retry_after="1")
    processor = build(backoff_cap_s=5.0).processor
    queued = make_event()
    with pytest.raises(Retry) as retry:
        await processor.process(queued.idempotency_key, 1, payload(queued))
    assert retry.value.defer_score == 1000


async def test_unknown_exceptions_are_retried_until_attempts_run_out(
    build: Build, mongo_db: AsyncDatabase[Document]
) -> None:
    deliverer = Raising(RuntimeError("a bug"))
    built = build(downstream=deliverer, max_attempts=3)
    result, retries = await run_to_end(built.processor, make_event())
    assert (result, len(retries), deliverer.calls) == ("dead_lettered", 2, 3)
    letter = await stored_letter(mongo_db, "acme:evt_1")
    assert (letter.reason, letter.error.code) == ("retries_exhausted", "unexpected_error")
    assert [a.attempt for a in letter.attempts] == [1, 2, 3]
    assert letter.error.message == "RuntimeError: a bug"
    assert built.sample("gateway_worker_retries_total", code="unexpected_error") == 2


async def test_cancelled_run_gives_its_lease_back_without_counting_an_attempt(
    build: Build, mongo_db: AsyncDatabase[Document]
) -> None:
    deliverer = Blocking()
    built = build(downstream=deliverer, job_timeout_s=30, lease_s=40)
    queued = make_event()
    task = asyncio.create_task(built.processor.process(queued.idempotency_key, 1, payload(queued)))
    await asyncio.wait_for(deliverer.entered.wait(), 10)
    task.cancel()
    with pytest.raises(Retry):
        await task
    record = await stored_record(mongo_db, "acme:evt_1")
    assert (record.status, record.attempts) == ("retrying", 0)
    assert record.lease_until is None
    assert record.attempt_log == ()
    assert built.sample("gateway_worker_jobs_total", outcome="cancelled") == 1
    # The re-run takes the key and finishes it.
    deliverer.release.set()
    assert await built.processor.process(queued.idempotency_key, 2, payload(queued)) == (
        "succeeded"
    )


async def test_steps_past_the_job_deadline_are_a_counted_transient_failure(
    build: Build, mongo_db: AsyncDatabase[Document]
) -> None:
    processor = build(downstream=Blocking(), job_timeout_s=0.5, lease_s=3).processor
    queued = make_event()
    with pytest.raises(Retry):
        await processor.process(queued.idempotency_key, 1, payload(queued))
    record = await stored_record(mongo_db, "acme:evt_1")
    assert (record.status, record.attempts) == ("retrying", 1)
    assert record.last_error is not None
    assert record.last_error.code == "job_timeout"


async def test_failure_that_cannot_be_recorded_is_retried_without_counting(
    build: Build, unreachable_db: AsyncDatabase[Document]
) -> None:
    built = build(downstream=None, db=unreachable_db, backoff_cap_s=0.5)
    queued = make_event()
    for job_try in (1, 2, 3):
        with pytest.raises(Retry) as retry:
            await built.processor.process(queued.idempotency_key, job_try, payload(queued))
        assert retry.value.defer_score is not None
        assert retry.value.defer_score <= 500
    assert built.sample("gateway_worker_retries_total", code="store_unavailable") == 3


async def assert_undecodable_dead_letter(
    db: AsyncDatabase[Document], key: str, body: bytes
) -> DeadLetterDocument:
    """``key`` is dead-lettered for an undecodable payload, keeping ``body``; its letter."""
    letter = await stored_letter(db, key)
    assert (letter.reason, letter.error.code) == ("permanent", "undecodable_payload")
    assert letter.body == body
    assert (await stored_record(db, key)).status == "dead_lettered"
    return letter


async def test_undecodable_payload_is_dead_lettered_under_its_job_id(
    build: Build, mongo_db: AsyncDatabase[Document]
) -> None:
    processor = build(downstream=None).processor
    broken: dict[str, Any] = {
        "source": "acme",
        "request_id": "req_9",
        "event": {"event_id": "evt_9", "event_type": "shipment.teleported"},
    }
    assert await processor.process("acme:evt_9", 1, broken) == "dead_lettered"
    # A job in the old format (the event decoded): its event is kept as JSON.
    await assert_undecodable_dead_letter(
        mongo_db, "acme:evt_9", msgspec.json.encode(broken["event"])
    )
    # Not a dict at all: still dead-lettered, never an arq failure.
    assert await processor.process("weird", 1, ["not", "an", "event"]) == "dead_lettered"


async def test_a_body_that_no_longer_decodes_is_dead_lettered_byte_exact(
    build: Build, mongo_db: AsyncDatabase[Document]
) -> None:
    body = b'{"event_id": "evt_1", "event_type": "shipment.teleported", "data": {"n": 1e999}}'
    queued = msgspec.structs.replace(make_event(), body=body)
    result, _ = await run_to_end(build(downstream=None).processor, queued)
    assert result == "dead_lettered"
    letter = await assert_undecodable_dead_letter(mongo_db, queued.idempotency_key, body)
    assert (letter.shipment_id, letter.event_type) == (None, None)


async def _dead_letter_then_add_replay(
    processor: EventProcessor,
    mongo_db: AsyncDatabase[Document],
    downstream: MockDownstreamClient,
    replay_job_ids: list[str],
) -> QueuedEvent:
    """Dead-letter ``acme:evt_1`` by a downstream outage, then note replays of it; its replay."""
    queued = make_event()
    await downstream.control(always={"acme:evt_1": 503})
    result, _ = await run_to_end(processor, queued)
    assert result == "dead_lettered"
    await mongo_db[DEAD_LETTER_EVENTS].update_one(
        {"_id": queued.idempotency_key},
        {
            "$push": {
                "replays": {
                    "$each": [
                        {"at": T0, "by": "ops", "job_id": job_id, "outcome": None}
                        for job_id in replay_job_ids
                    ]
                }
            }
        },
    )
    return msgspec.structs.replace(queued, replay=ReplayRef(by="ops", at_ms=1))


async def test_replayed_dead_letter_is_processed_once_and_marked_replayed(
    processor: EventProcessor, mongo_db: AsyncDatabase[Document], downstream: MockDownstreamClient
) -> None:
    replayed = await _dead_letter_then_add_replay(
        processor, mongo_db, downstream, ["replay-1", "replay-2"]
    )
    await downstream.control(always={})
    assert await processor.process("replay-1", 1, payload(replayed)) == "succeeded"
    assert await processor.process("replay-2", 1, payload(replayed)) == "duplicate"
    letter = await stored_letter(mongo_db, "acme:evt_1")
    assert letter.status == "replayed"
    assert [r.outcome for r in letter.replays] == ["succeeded", "duplicate"]
    assert (await downstream.deliveries()).ok == {"acme:evt_1": 1}
    assert (await stored_record(mongo_db, "acme:evt_1")).status == "succeeded"


async def test_replay_that_fails_again_returns_the_dead_letter_to_pending_with_new_attempts(
    processor: EventProcessor, mongo_db: AsyncDatabase[Document], downstream: MockDownstreamClient
) -> None:
    replayed = await _dead_letter_then_add_replay(processor, mongo_db, downstream, ["replay-1"])
    await mongo_db[DEAD_LETTER_EVENTS].update_one(
        {"_id": "acme:evt_1"}, {"$set": {"status": "replayed"}}
    )
    result, retries = await run_to_end(processor, replayed, job_id="replay-1")
    assert (result, len(retries)) == ("dead_lettered", 1)
    letter = await stored_letter(mongo_db, "acme:evt_1")
    assert letter.status == "pending"
    assert [a.attempt for a in letter.attempts] == [1, 2, 1, 2]
    assert [r.outcome for r in letter.replays] == ["dead_lettered"]
    record = await stored_record(mongo_db, "acme:evt_1")
    assert (record.status, record.attempts) == ("dead_lettered", 2)
