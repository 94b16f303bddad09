"""The dead-letter service (``shared.dlq``): filters, pages, show, replay, discard, pacing.

Real MongoDB-wire server and Redis; replay jobs are run by the worker's own
``EventProcessor`` in process (``drain``), deliveries go to the mock
downstream over HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from pymongo.asynchronous.database import AsyncDatabase

from gateway_worker.jobs import EventProcessor
from scripts.harness.services import RedisServer
from shared.contracts import EventType
from shared.dlq import (
    ENQUEUE_GRACE_S,
    DeadLetterFilter,
    DeadLetterNotFound,
    DeadLetterReason,
    DeadLetterService,
    DeadLetterStatus,
    DiscardReasonRequired,
    EventNotFound,
    InvalidRequest,
    NotDiscardable,
    NotReplayable,
    Pacer,
    ReplayAction,
    ReplayFailure,
    ReplayResult,
    ReplaySummary,
    decode_cursor,
    parse_rate,
    parse_time,
)
from shared.queue import QueueUnavailable
from shared.storage.events import ProcessedEvents
from shared.storage.mongo import PROCESSED_EVENTS, Document
from tests.factories import (
    T0,
    write_filter_letters,
    write_letter,
    write_letters,
    write_permanent_letter,
)
from tests.plugins.dlq import MakeService, Outage, assert_discarded
from tests.plugins.servers import snapshot
from tests.plugins.worker import shipment_history, stored_letter


class FakeTime:
    """A monotonic clock whose ``sleep`` advances it instantly, recording each sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Clock:
    """A settable wall clock for the service (``replays`` entry times, grace)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def keys_of(service: DeadLetterService, **filters: Any) -> set[str]:
    page = await service.list(DeadLetterFilter(**filters), limit=500)
    return {item.idempotency_key for item in page.items}


async def collect(iterator: Any) -> list[ReplayResult | ReplayFailure]:
    return [item async for item in iterator]


# ── listing ─────────────────────────────────────────────────────────────────


async def test_filters_select_exactly_the_matching_entries(
    service: DeadLetterService, mongo_db: AsyncDatabase[Document]
) -> None:
    a, b, c = await write_filter_letters(mongo_db)
    d = await write_permanent_letter(
        mongo_db, "evt_d", "downstream_rejected", at=T0 + timedelta(minutes=30)
    )
    await service.discard(d, by="ops", reason="courier confirmed a test event")

    assert await keys_of(service) == {a, b, c, d}
    assert await keys_of(service, source="legacy") == {c}
    assert await keys_of(service, source="acme") == {a, b, d}
    assert await keys_of(service, code="order_mismatch") == {b}
    assert await keys_of(service, code="downstream_unavailable") == {a, c}
    assert await keys_of(service, reason=DeadLetterReason.PERMANENT) == {b, d}
    assert await keys_of(service, status=DeadLetterStatus.DISCARDED) == {d}
    assert await keys_of(service, status=DeadLetterStatus.PENDING) == {a, b, c}
    assert await keys_of(service, since=T0 + timedelta(minutes=10)) == {b, c, d}
    assert await keys_of(service, until=T0 + timedelta(minutes=10)) == {a}
    window = {"since": T0 + timedelta(minutes=5), "until": T0 + timedelta(minutes=25)}
    assert await keys_of(service, **window) == {b, c}
    assert await keys_of(service, source="acme", reason=DeadLetterReason.PERMANENT, **window) == {b}
    assert await keys_of(service, source="nobody") == set()
    assert await service.count(DeadLetterFilter(source="acme")) == 3


async def test_pages_follow_the_cursor_newest_first_without_repeats_when_new_ones_arrive(
    service: DeadLetterService, mongo_db: AsyncDatabase[Document]
) -> None:
    # Pairs share a timestamp, so the order within a second depends on the key.
    keys = [
        await write_letter(mongo_db, f"evt_{i}", at=T0 + timedelta(seconds=i // 2))
        for i in range(7)
    ]
    newest_first = sorted(keys, key=lambda k: (int(k.split("_")[1]) // 2, k), reverse=True)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await service.list(DeadLetterFilter(), limit=3, cursor=cursor)
        seen += [item.idempotency_key for item in page.items]
        pages += 1
        if pages == 1:
            await write_letter(mongo_db, "evt_new", at=T0 + timedelta(hours=1))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == newest_first
    assert pages == 3
    first = await service.list(DeadLetterFilter(), limit=1)
    assert [item.idempotency_key for item in first.items] == ["acme:evt_new"]


async def test_a_full_last_page_has_no_next_cursor(
    service: DeadLetterService, mongo_db: AsyncDatabase[Document]
) -> None:
    await write_letters(mongo_db, 2)
    page = await service.list(DeadLetterFilter(), limit=2)
    assert (len(page.items), page.next_cursor) == (2, None)


@pytest.mark.parametrize("cursor", ["not-base64!", "bm9wZQ", "WzEsMl0"])
async def test_a_cursor_not_from_the_service_is_refused(
    service: DeadLetterService, cursor: str
) -> None:
    with pytest.raises(InvalidRequest, match="cursor"):
        await service.list(DeadLetterFilter(), cursor=cursor)


@pytest.mark.parametrize("limit", [0, -1, 501])
async def test_a_page_limit_outside_1_to_500_is_refused(
    service: DeadLetterService, limit: int
) -> None:
    with pytest.raises(InvalidRequest, match="limit must be between 1 and 500"):
        await service.list(DeadLetterFilter(), limit=limit)


async def test_list_rows_summarise_reason_code_attempts_and_last_replay(
    service: DeadLetterService, mongo_db: AsyncDatabase[Document]
) -> None:
    key = await write_letter(mongo_db, "evt_1", event_type=EventType.DELIVERED)
    await service.replay(key, by="alice")
    (row,) = (await service.list(DeadLetterFilter())).items
    assert (row.idempotency_key, row.source, row.event_id, row.shipment_id) == (
        key,
        "acme",
        "evt_1",
        "shp_1",
    )
    assert (row.event_type, row.reason, row.error.code, row.attempts) == (
        "shipment.delivered",
        "retries_exhausted",
        "downstream_unavailable",
        1,
    )
    assert row.replays == 1
    assert row.last_replay is not None
    assert (row.last_replay.by, row.last_replay.outcome) == ("alice", None)
    assert row.dead_lettered_at == T0


# ── show and event ──────────────────────────────────────────────────────────


async def test_show_has_the_event_every_attempt_every_replay_and_the_key_record(
    service: DeadLetterService, outage: Outage
) -> None:
    (key,) = await outage.dead_letter("evt_1")
    await service.replay(key, by="alice")
    await outage.drain()  # fails again: back to pending

    detail = await service.show(key)
    assert (detail.status, detail.reason, detail.error.code) == (
        "pending",
        "retries_exhausted",
        "downstream_unavailable",
    )
    assert detail.event is not None
    event = json.loads(detail.event)
    assert (event["event_id"], event["shipment"]["id"]) == ("evt_1", "shp_evt_1")
    assert detail.request_id == "req_evt_1"
    assert [a.attempt for a in detail.attempts] == [1, 2, 1, 2]
    assert all(a.code == "downstream_unavailable" and a.transient for a in detail.attempts)
    assert [(r.by, r.job_id, r.outcome) for r in detail.replays] == [
        ("alice", f"replay/1/{key}", "dead_lettered")
    ]
    assert detail.processing is not None
    assert (detail.processing.status, detail.processing.attempts) == ("dead_lettered", 2)
    assert detail.processing.dead_letter_status == "pending"


async def test_show_and_event_of_an_unknown_key_are_not_found(
    service: DeadLetterService,
) -> None:
    with pytest.raises(DeadLetterNotFound, match="acme:nope"):
        await service.show("acme:nope")
    with pytest.raises(EventNotFound, match="acme:nope"):
        await service.event("acme:nope")


async def test_event_record_reports_status_attempts_and_last_error(
    service: DeadLetterService, outage: Outage
) -> None:
    (key,) = await outage.dead_letter("evt_1")
    record = await service.event(key)
    assert (record.status, record.attempts, record.dead_letter_status) == (
        "dead_lettered",
        2,
        "pending",
    )
    assert record.last_error is not None
    assert record.last_error.code == "downstream_unavailable"
    assert [a.attempt for a in record.attempt_log] == [1, 2]


# ── replay ──────────────────────────────────────────────────────────────────


async def test_replay_after_the_cause_is_fixed_ends_succeeded_with_one_effect(
    service: DeadLetterService, outage: Outage, mongo_db: AsyncDatabase[Document]
) -> None:
    (key,) = await outage.dead_letter("evt_1", fixed=True)

    result = await service.replay(key, by="alice")
    assert (result.action, result.job_id) == (ReplayAction.ENQUEUED, f"replay/1/{key}")
    assert await outage.drain() == {f"replay/1/{key}": "succeeded"}

    letter = await stored_letter(mongo_db, key)
    assert letter.status == "replayed"
    (entry,) = letter.replays
    assert (entry.by, entry.job_id, entry.outcome) == (
        "alice",
        f"replay/1/{key}",
        "succeeded",
    )
    assert await ProcessedEvents(mongo_db).status(key) == "succeeded"
    assert await outage.delivered() == {key: 1}
    assert await shipment_history(mongo_db, "shp_evt_1") == ["evt_1"]


async def test_replaying_the_same_entry_again_and_again_has_one_effect(
    service: DeadLetterService, outage: Outage
) -> None:
    (key,) = await outage.dead_letter("evt_1", fixed=True)

    first = await service.replay(key, by="alice")
    second = await service.replay(key, by="bob")
    assert (first.action, second.action) == (ReplayAction.ENQUEUED, ReplayAction.IN_FLIGHT)
    assert second.job_id == first.job_id
    assert await outage.queued() == 1
    await outage.drain()
    third = await service.replay(key, by="carol")
    assert third.action is ReplayAction.ALREADY_REPLAYED
    assert await outage.queued() == 0
    assert await outage.delivered() == {key: 1}


async def test_concurrent_replays_of_the_same_entries_enqueue_each_exactly_once(
    make_service: MakeService, outage: Outage
) -> None:
    keys = await outage.dead_letter("evt_1", "evt_2", "evt_3", fixed=True)
    # Separate services, as separate operators would have.
    services = [make_service() for _ in range(4)]

    async def bulk(svc: DeadLetterService) -> list[ReplayResult | ReplayFailure]:
        return await collect(svc.replay_matching(DeadLetterFilter(), by="ops"))

    results = [item for run in await asyncio.gather(*map(bulk, services)) for item in run]
    assert all(isinstance(item, ReplayResult) for item in results)
    enqueued = [i.idempotency_key for i in results if i.action is ReplayAction.ENQUEUED]  # type: ignore[union-attr]
    assert sorted(enqueued) == sorted(keys)
    assert await outage.queued() == 3
    await outage.drain()
    assert await outage.delivered() == dict.fromkeys(keys, 1)


async def test_replaying_an_entry_whose_event_has_since_succeeded_is_a_reported_no_op(
    service: DeadLetterService, outage: Outage, mongo_db: AsyncDatabase[Document]
) -> None:
    (key,) = await outage.dead_letter("evt_1")
    # The key succeeded by another way (e.g. a replay whose outcome note was lost).
    await mongo_db[PROCESSED_EVENTS].update_one({"_id": key}, {"$set": {"status": "succeeded"}})

    dry = await service.replay(key, by="alice", dry_run=True)
    assert (dry.action, dry.dry_run) == (ReplayAction.ALREADY_SUCCEEDED, True)
    result = await service.replay(key, by="alice")
    assert (result.action, result.job_id) == (ReplayAction.ALREADY_SUCCEEDED, None)
    assert "already succeeded" in result.detail
    letter = await stored_letter(mongo_db, key)
    assert letter.status == "replayed"
    assert [(r.by, r.job_id, r.outcome) for r in letter.replays] == [
        ("alice", None, "already_succeeded")
    ]
    assert await outage.queued() == 0


async def test_a_replay_that_fails_again_returns_to_pending_and_can_be_replayed_once_fixed(
    service: DeadLetterService, outage: Outage, mongo_db: AsyncDatabase[Document]
) -> None:
    (key,) = await outage.dead_letter("evt_1")
    await service.replay(key, by="alice")  # cause not fixed yet
    assert await outage.drain() == {f"replay/1/{key}": "dead_lettered"}
    await outage.fix()
    again = await service.replay(key, by="alice")
    assert again.job_id == f"replay/2/{key}"
    await outage.drain()

    letter = await stored_letter(mongo_db, key)
    assert letter.status == "replayed"
    assert [r.outcome for r in letter.replays] == ["dead_lettered", "succeeded"]
    assert len(letter.attempts) == 4
    assert await outage.delivered() == {key: 1}


async def test_dry_run_changes_nothing_in_mongodb_or_redis(
    service: DeadLetterService, outage: Outage, redis: ArqRedis, mongo_db: AsyncDatabase[Document]
) -> None:
    keys = await outage.dead_letter("evt_1", "evt_2")
    await mongo_db[PROCESSED_EVENTS].update_one({"_id": keys[1]}, {"$set": {"status": "succeeded"}})
    await write_letter(mongo_db, "evt_other", source="legacy")
    before = await snapshot(mongo_db, redis)

    results = await collect(
        service.replay_matching(DeadLetterFilter(source="acme"), by="ops", dry_run=True)
    )
    single = await service.replay(keys[0], by="ops", dry_run=True)

    assert await snapshot(mongo_db, redis) == before
    assert {(r.idempotency_key, r.action) for r in results if isinstance(r, ReplayResult)} == {
        (keys[0], ReplayAction.WOULD_ENQUEUE),
        (keys[1], ReplayAction.ALREADY_SUCCEEDED),
    }
    assert all(isinstance(r, ReplayResult) and r.dry_run for r in results)
    assert single.action is ReplayAction.WOULD_ENQUEUE


async def test_replaying_a_permanent_failure_warns_that_it_fails_again_unless_fixed(
    service: DeadLetterService, mongo_db: AsyncDatabase[Document]
) -> None:
    permanent = await write_permanent_letter(mongo_db, "evt_p")
    transient = await write_letter(mongo_db, "evt_t")
    dry = await service.replay(permanent, by="ops", dry_run=True)
    assert dry.warning == (
        "dead-lettered for a permanent error (order_mismatch): "
        "fails again unless its cause was fixed"
    )
    assert (await service.replay(permanent, by="ops")).warning == dry.warning
    assert (await service.replay(transient, by="ops")).warning is None


async def test_bulk_replay_takes_only_pending_matches_newest_first_up_to_the_limit(
    service: DeadLetterService, mongo_db: AsyncDatabase[Document]
) -> None:
    keys = await write_letters(mongo_db, 4, every=timedelta(minutes=1))
    await write_letter(mongo_db, "evt_mismatch", code="order_mismatch")
    await service.discard(keys[3], by="ops", reason="test event")

    results = await collect(
        service.replay_matching(DeadLetterFilter(code="downstream_unavailable"), by="ops", limit=2)
    )
    assert [(r.idempotency_key, r.action) for r in results] == [  # type: ignore[union-attr]
        (keys[2], ReplayAction.ENQUEUED),
        (keys[1], ReplayAction.ENQUEUED),
    ]
    summary = ReplaySummary(dry_run=False)
    for item in await collect(
        service.replay_matching(DeadLetterFilter(code="downstream_unavailable"), by="ops")
    ):
        summary.add(item)
    assert (summary.matched, summary.enqueued, summary.in_flight) == (3, 1, 2)
    assert await service.count_replayable(DeadLetterFilter(code="downstream_unavailable")) == 3


async def test_bulk_replay_refuses_a_status_other_than_pending(
    service: DeadLetterService,
) -> None:
    with pytest.raises(InvalidRequest, match="only pending"):
        await collect(
            service.replay_matching(DeadLetterFilter(status=DeadLetterStatus.DISCARDED), by="ops")
        )


async def test_an_undecodable_dead_letter_is_not_replayable_and_reported_in_bulk(
    service: DeadLetterService, processor: EventProcessor
) -> None:
    broken = {"source": "acme", "event": {"event_id": "evt_9", "event_type": "nope"}}
    assert await processor.process("acme:evt_9", 1, broken) == "dead_lettered"
    with pytest.raises(NotReplayable, match="not a valid courier event"):
        await service.replay("acme:evt_9", by="ops")
    (failure,) = await collect(service.replay_matching(DeadLetterFilter(), by="ops"))
    assert isinstance(failure, ReplayFailure)
    assert (failure.idempotency_key, failure.code) == ("acme:evt_9", "not_replayable")


async def test_replaying_an_unknown_or_discarded_entry_is_refused(
    service: DeadLetterService, mongo_db: AsyncDatabase[Document]
) -> None:
    with pytest.raises(DeadLetterNotFound):
        await service.replay("acme:nope", by="ops")
    key = await write_letter(mongo_db, "evt_1")
    await service.discard(key, by="ops", reason="duplicate of evt_2 sent by the courier")
    with pytest.raises(NotReplayable, match="discarded"):
        await service.replay(key, by="ops")


async def test_a_replay_redis_refused_is_closed_as_enqueue_failed_and_can_be_retried(
    make_service: MakeService,
    service: DeadLetterService,
    redis_server: RedisServer,
    redis: ArqRedis,
    mongo_db: AsyncDatabase[Document],
) -> None:
    key = await write_letter(mongo_db, "evt_1")
    redis_server.stop()
    with pytest.raises(QueueUnavailable):
        await service.replay(key, by="ops")
    letter = await stored_letter(mongo_db, key)
    assert letter.status == "pending"
    assert [(r.job_id, r.outcome) for r in letter.replays] == [
        (f"replay/1/{key}", "enqueue_failed")
    ]
    redis_server.start()
    retried = make_service()
    assert (await retried.replay(key, by="ops")).job_id == f"replay/2/{key}"
    assert await redis.exists(job_key_prefix + f"replay/2/{key}")


@dataclass
class Replayed:
    """A dead letter replayed once by a service on a settable wall clock."""

    service: DeadLetterService
    clock: Clock
    key: str


@pytest.fixture
async def replayed(make_service: MakeService, mongo_db: AsyncDatabase[Document]) -> Replayed:
    """``acme:evt_1`` dead-lettered and replayed once, the clock at the real time of the replay."""
    clock = Clock(datetime.now(UTC))
    service = make_service(clock=clock)
    key = await write_letter(mongo_db, "evt_1")
    await service.replay(key, by="ops")
    return Replayed(service, clock, key)


async def test_a_replay_whose_job_vanished_blocks_new_replays_only_for_the_grace_period(
    replayed: Replayed, redis: ArqRedis
) -> None:
    service, clock, key = replayed.service, replayed.clock, replayed.key
    await redis.flushall()  # e.g. a Redis crash lost the job

    clock.now += timedelta(seconds=ENQUEUE_GRACE_S - 1)
    assert (await service.replay(key, by="ops")).action is ReplayAction.IN_FLIGHT
    clock.now += timedelta(seconds=2)
    retried = await service.replay(key, by="ops")
    assert (retried.action, retried.job_id) == (ReplayAction.ENQUEUED, f"replay/2/{key}")


async def test_a_replay_whose_job_is_still_queued_stays_in_flight_after_the_grace_period(
    replayed: Replayed,
) -> None:
    replayed.clock.now += timedelta(hours=1)
    assert (await replayed.service.replay(replayed.key, by="ops")).action is ReplayAction.IN_FLIGHT


async def test_an_unreachable_redis_while_checking_an_earlier_replay_is_queue_unavailable(
    replayed: Replayed, redis_server: RedisServer
) -> None:
    replayed.clock.now += timedelta(hours=1)
    redis_server.stop()
    with pytest.raises(QueueUnavailable, match=f"replay job replay/1/{replayed.key}"):
        await replayed.service.replay(replayed.key, by="ops", dry_run=True)


# ── pacing ──────────────────────────────────────────────────────────────────


async def test_bulk_replay_at_a_rate_spaces_the_replays_by_the_interval(
    service: DeadLetterService, mongo_db: AsyncDatabase[Document]
) -> None:
    await write_letters(mongo_db, 5)
    fake = FakeTime()
    started: list[float] = []
    async for item in service.replay_matching(
        DeadLetterFilter(), by="ops", pacer=Pacer(parse_rate("4/s"), now=fake, sleep=fake.sleep)
    ):
        assert isinstance(item, ReplayResult)
        assert item.action is ReplayAction.ENQUEUED
        started.append(fake.now)
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert gaps == pytest.approx([0.25] * 4)
    assert sum(fake.sleeps) == pytest.approx(1.0)


async def test_pacer_lets_the_first_call_through_and_never_bursts_after_falling_behind() -> None:
    fake = FakeTime()
    pacer = Pacer(2.0, now=fake, sleep=fake.sleep)
    await pacer.wait()
    assert fake.sleeps == []
    fake.now += 0.1
    await pacer.wait()
    assert fake.sleeps == [pytest.approx(0.4)]
    fake.now += 5.0  # the caller was slow: no catching up
    await pacer.wait()
    await pacer.wait()
    assert fake.sleeps[1:] == [pytest.approx(0.5)]


async def test_a_dry_run_is_not_paced(
    service: DeadLetterService, mongo_db: AsyncDatabase[Document]
) -> None:
    await write_letters(mongo_db, 3, every=timedelta(0))
    fake = FakeTime()
    pacer = Pacer(1.0, now=fake, sleep=fake.sleep)
    results = await collect(
        service.replay_matching(DeadLetterFilter(), by="ops", dry_run=True, pacer=pacer)
    )
    assert (len(results), fake.sleeps) == (3, [])


@pytest.mark.parametrize(
    ("text", "per_s"), [("5", 5.0), ("5/s", 5.0), ("0.5/s", 0.5), ("30/m", 0.5), (" 2 / s ", 2.0)]
)
def test_rates_are_read_per_second_or_per_minute(text: str, per_s: float) -> None:
    assert parse_rate(text) == per_s


@pytest.mark.parametrize("text", ["0", "0/s", "-1", "fast", "5/h", ""])
def test_a_rate_that_is_not_positive_is_refused(text: str) -> None:
    with pytest.raises(InvalidRequest, match="not a positive rate"):
        parse_rate(text)


# ── times and cursors ───────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T10:15:00Z", datetime(2026, 11, 22, 10, 15, tzinfo=UTC)),
        ("2026-11-22T12:15:00+02:00", datetime(2026, 11, 22, 10, 15, tzinfo=UTC)),
        ("2026-11-22T10:15:00", datetime(2026, 11, 22, 10, 15, tzinfo=UTC)),
        ("2026-11-22", datetime(2026, 11, 22, tzinfo=UTC)),
        ("90s", T0 - timedelta(seconds=90)),
        ("15m", T0 - timedelta(minutes=15)),
        ("2h", T0 - timedelta(hours=2)),
        ("1.5d", T0 - timedelta(hours=36)),
    ],
)
def test_times_are_rfc3339_dates_or_ages(text: str, expected: datetime) -> None:
    assert parse_time(text, now=T0) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "2026-13-01", "5w"])
def test_a_time_that_cannot_be_read_is_refused_naming_the_parameter(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"since: .* is not an RFC 3339 time"):
        parse_time(text, now=T0, name="since")


async def test_a_cursor_stands_for_the_last_row_of_its_page(
    service: DeadLetterService, mongo_db: AsyncDatabase[Document]
) -> None:
    await write_letters(mongo_db, 3)
    page = await service.list(DeadLetterFilter(), limit=2)
    assert page.next_cursor is not None
    position = decode_cursor(page.next_cursor)
    assert (position.dead_lettered_at, position.key) == (T0 + timedelta(seconds=1), "acme:evt_1")


# ── discard ─────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("reason", [None, "", "   "])
async def test_discard_without_a_reason_is_refused_and_changes_nothing(
    service: DeadLetterService, mongo_db: AsyncDatabase[Document], reason: str | None
) -> None:
    key = await write_letter(mongo_db, "evt_1")
    with pytest.raises(DiscardReasonRequired):
        await service.discard(key, by="ops", reason=reason)
    letter = await stored_letter(mongo_db, key)
    assert (letter.status, letter.discard_reason) == ("pending", None)


async def test_discard_records_the_reason_and_the_operator_and_is_idempotent(
    service: DeadLetterService, mongo_db: AsyncDatabase[Document]
) -> None:
    key = await write_letter(mongo_db, "evt_1")
    result = await service.discard(key, by="alice", reason="  order was cancelled upstream ")
    assert (result.status, result.discard_reason, result.already_discarded) == (
        "discarded",
        "order was cancelled upstream",
        False,
    )
    again = await service.discard(key, by="bob", reason="another reason")
    assert (again.already_discarded, again.discard_reason, again.discarded_by) == (
        True,
        "order was cancelled upstream",
        "alice",
    )
    await assert_discarded(mongo_db, key, "order was cancelled upstream", "alice")


async def test_an_entry_being_replayed_or_replayed_cannot_be_discarded(
    service: DeadLetterService, outage: Outage
) -> None:
    (key,) = await outage.dead_letter("evt_1", fixed=True)
    await service.replay(key, by="ops")
    with pytest.raises(NotDiscardable, match="in flight"):
        await service.discard(key, by="ops", reason="changed my mind")
    await outage.drain()
    with pytest.raises(NotDiscardable, match="replayed successfully"):
        await service.discard(key, by="ops", reason="changed my mind")
    with pytest.raises(DeadLetterNotFound):
        await service.discard("acme:nope", by="ops", reason="x")
