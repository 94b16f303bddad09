"""Real ``gateway worker`` processes against real Redis, the MongoDB-wire server and the
mock downstream: duplicates, retries, dead letters, crashes, shutdowns and outages."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from datetime import timedelta

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from gateway_worker.backoff import backoff_bound
from scripts.harness.services import RedisServer
from scripts.harness.tcp_proxy import TcpProxy
from shared.contracts import EventType, QueuedEvent
from shared.queue import Enqueuer, open_queue_pool, worker_health_key
from shared.settings import Settings
from shared.storage.mongo import PROCESSED_EVENTS, Document
from tests.factories import DELIVERY_WITH_A_RETRY, T0, make_event, settings_env
from tests.plugins.worker import (
    Workers,
    shipment_history,
    statuses,
    stored_letter,
    stored_record,
    stored_shipment,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.slow


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    variables = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    variables.update(env)
    process = await asyncio.create_subprocess_exec(
        ".venv/bin/gateway",
        *args,
        env=variables,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_each_worker_has_its_own_health_key_and_worker_health_reports_it(
    workers: Workers,
) -> None:
    settings, (first, second) = await workers.start(2)
    env = settings_env(settings)
    assert (await run_cli("worker-health", "--worker-id", first.worker_id, env=env))[0] == 0
    assert (await run_cli("worker-health", "--worker-id", "nobody", env=env))[0] == 1

    first.signal(signal.SIGTERM)
    assert await workers.pool.wait_exit(first, timeout_s=15) == 0
    # arq deletes the health key of the worker that stops, and only that one.
    assert not await workers.redis.exists(worker_health_key(settings.queue_name, first.worker_id))
    assert await workers.redis.exists(worker_health_key(settings.queue_name, second.worker_id))
    assert (await run_cli("worker-health", "--worker-id", first.worker_id, env=env))[0] == 1


async def test_worker_health_without_an_id_finds_this_hosts_default_named_worker(
    workers: Workers,
) -> None:
    settings = workers.settings_for()
    env = settings_env(settings)
    assert (await run_cli("worker-health", env=env))[0] == 1
    (worker,) = await workers.pool.start(settings, 1, default_id=True)
    code, output = await run_cli("worker-health", env=env)
    assert code == 0, output
    assert worker.worker_id in output


async def test_one_key_submitted_fifty_times_across_two_workers_has_one_effect(
    workers: Workers,
) -> None:
    await workers.start(2)
    await workers.downstream.control(latency_ms=200)
    queued = make_event()
    job_ids = [queued.idempotency_key] + [f"{queued.idempotency_key}#dup{n}" for n in range(49)]
    assert all(await asyncio.gather(*(workers.enqueue(queued, job_id) for job_id in job_ids)))

    async def all_finished() -> bool:
        infos = [await workers.job_result(job_id) for job_id in job_ids]
        return all(info is not None for info in infos)

    await wait_until(all_finished, timeout_s=40)
    results = [await workers.job_result(job_id) for job_id in job_ids]
    outcomes = [info.result for info in results if info is not None and info.success]
    assert sorted(set(outcomes)) == ["duplicate", "succeeded"]
    assert (outcomes.count("succeeded"), outcomes.count("duplicate")) == (1, 49)

    assert await shipment_history(workers.db) == ["evt_1"]
    log = await workers.downstream.deliveries()
    assert (log.counts, log.ok) == ({"acme:evt_1": 1}, {"acme:evt_1": 1})
    metrics = await workers.pool.metrics()
    duplicates = metrics[
        ("gateway_events_duplicate_total", (("source", "acme"), ("stage", "worker")))
    ]
    assert duplicates == 49
    assert metrics[("gateway_worker_jobs_total", (("outcome", "duplicate"),))] == 49
    assert metrics[("gateway_worker_jobs_total", (("outcome", "succeeded"),))] == 1


async def test_downstream_503_twice_then_200_succeeds_with_two_attempts_within_backoff(
    workers: Workers,
) -> None:
    settings, _ = await workers.start(
        2, backoff_base_s=0.2, backoff_multiplier=4.0, backoff_cap_s=5.0
    )
    await workers.downstream.control(fail_first=2)
    (key,) = await workers.submit(make_event(), until="succeeded")

    record = await stored_record(workers.db, key)
    assert record.attempts == 2
    log = record.attempt_log
    assert [(a.attempt, a.code, a.transient) for a in log] == [
        (1, "downstream_unavailable", True),
        (2, "downstream_unavailable", True),
    ]
    deliveries = (await workers.downstream.deliveries()).deliveries
    assert [d.status for d in deliveries] == [503, 503, 200]
    for number, entry in enumerate(log, start=1):
        bound_s = backoff_bound(
            number,
            base_s=settings.backoff_base_s,
            multiplier=settings.backoff_multiplier,
            cap_s=settings.backoff_cap_s,
        )
        assert entry.retry_in_ms is not None
        chosen_s = entry.retry_in_ms / 1000
        assert 0 <= chosen_s <= bound_s + 0.001
        failed_at = deliveries[number - 1].answered_at
        assert failed_at is not None
        waited_s = deliveries[number].received_at - failed_at
        # Not before the chosen delay; after it only by polling and the job's own steps.
        assert chosen_s - 0.01 <= waited_s <= chosen_s + 1.5


async def test_downstream_always_503_is_dead_lettered_after_exactly_max_attempts(
    workers: Workers,
) -> None:
    await workers.start(2, max_attempts=4)
    queued = make_event()
    await workers.downstream.control(always={queued.idempotency_key: 503})
    (key,) = await workers.submit(queued, until="dead_lettered")

    letter = await stored_letter(workers.db, key)
    assert (letter.reason, letter.status) == ("retries_exhausted", "pending")
    assert letter.error.code == "downstream_unavailable"
    assert [a.attempt for a in letter.attempts] == [1, 2, 3, 4]
    assert all(a.code == "downstream_unavailable" for a in letter.attempts)
    assert (await workers.downstream.deliveries()).counts == {key: 4}
    info = await workers.job_result(key)
    assert info is not None
    assert (info.success, info.result) == (True, "dead_lettered")


async def test_permanent_failures_are_dead_lettered_after_one_attempt_without_retry(
    workers: Workers,
) -> None:
    await workers.start(2)
    delivered = make_event("evt_d", EventType.DELIVERED, shipment_id="shp_t")
    await workers.submit(delivered, until="succeeded")

    rejected = make_event("evt_400", shipment_id="shp_r")
    later = T0 + timedelta(hours=1)
    invalid = make_event("evt_it", EventType.IN_TRANSIT, shipment_id="shp_t", occurred_at=later)
    mismatch = make_event("evt_om", EventType.DELIVERED, shipment_id="shp_t", order_id="ord_x")
    await workers.downstream.control(always={rejected.idempotency_key: 400})
    cases = {
        rejected.idempotency_key: "downstream_rejected",
        invalid.idempotency_key: "invalid_transition",
        mismatch.idempotency_key: "order_mismatch",
    }
    await workers.submit(rejected, invalid, mismatch, until="dead_lettered")

    for key, code in cases.items():
        letter = await stored_letter(workers.db, key)
        assert (letter.reason, letter.error.code) == ("permanent", code)
        assert [a.attempt for a in letter.attempts] == [1]
        assert (await stored_record(workers.db, key)).attempts == 1
    assert (await workers.downstream.deliveries()).counts == {
        delivered.idempotency_key: 1,
        rejected.idempotency_key: 1,
    }
    shipment = await stored_shipment(workers.db, "shp_t")
    assert (shipment["status"], [h["event_id"] for h in shipment["history"]]) == (
        "delivered",
        ["evt_d"],
    )


async def test_worker_killed_mid_job_is_finished_by_the_other_worker_with_one_effect(
    workers: Workers,
) -> None:
    # arq re-runs a job whose worker died once its in-progress key expires:
    # job_timeout + 10 s = 13 s here.
    await workers.start(2, job_timeout_s=3.0, lease_s=4.0, downstream_timeout_s=2.0)
    await workers.downstream.control(latency_ms=30_000)
    (key,) = await workers.submit(make_event())

    await workers.delivery_in_flight()
    victim = await workers.lease_owner(key)
    victim.signal(signal.SIGKILL)
    await workers.downstream.control(latency_ms=0)
    await wait_for_status(workers.db, [key], "succeeded", timeout_s=40)

    assert (await stored_record(workers.db, key)).attempts == 0
    assert await shipment_history(workers.db) == ["evt_1"]
    log = await workers.downstream.deliveries()
    assert log.ok == {key: 1}
    # The killed worker's request never got its answer.
    assert [d.disconnected for d in log.deliveries] == [True, False]


async def test_sigterm_lets_a_running_job_finish_within_the_grace_period_and_exits_zero(
    workers: Workers,
) -> None:
    _, (worker,) = await workers.start(
        1, shutdown_grace_s=5.0, job_timeout_s=5.0, lease_s=6.0, downstream_timeout_s=3.0
    )
    await workers.downstream.control(latency_ms=1000)
    (key,) = await workers.submit(make_event())

    await workers.delivery_in_flight()
    worker.signal(signal.SIGTERM)
    assert await workers.pool.wait_exit(worker, timeout_s=5.0) == 0
    assert (await statuses(workers.db, [key])) == {key: "succeeded"}
    log = await workers.downstream.deliveries()
    assert log.ok == {key: 1}
    assert not any(d.disconnected for d in log.deliveries)


async def test_job_longer_than_the_grace_period_is_rerun_elsewhere_and_not_counted(
    workers: Workers,
) -> None:
    await workers.start(
        2, shutdown_grace_s=0.5, job_timeout_s=8.0, lease_s=9.0, downstream_timeout_s=6.0
    )
    await workers.downstream.control(latency_ms=5000)
    (key,) = await workers.submit(make_event())

    await workers.delivery_in_flight()
    stopping = await workers.lease_owner(key)
    await workers.downstream.control(latency_ms=0)
    stopping.signal(signal.SIGTERM)
    assert await workers.pool.wait_exit(stopping, timeout_s=5.0) == 0
    await wait_for_status(workers.db, [key], "succeeded")

    record = await stored_record(workers.db, key)
    assert (record.attempts, record.attempt_log) == (0, ())
    cancelled = [line for line in stopping.log_lines() if line.get("event") == "job.cancelled"]
    assert [line["lease_released"] for line in cancelled] == [True]
    assert (await workers.downstream.deliveries()).ok == {key: 1}


async def test_ten_second_mongodb_outage_while_jobs_run_still_ends_every_event_succeeded(
    workers: Workers, mongo_url: str
) -> None:
    target = int(mongo_url.split("//")[1].split("/")[0].rsplit(":", 1)[1])
    proxy = await TcpProxy(target).start()
    try:
        await workers.start(
            2,
            mongo_url=f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true",
            max_attempts=6,
            backoff_base_s=0.2,
            backoff_multiplier=2.0,
            backoff_cap_s=2.0,
            job_timeout_s=4.0,
            lease_s=6.0,
            mongo_timeout_s=1.0,
        )
        await workers.downstream.control(latency_ms=300)
        before = [make_event(f"evt_b{n}", shipment_id=f"shp_b{n}") for n in range(6)]
        during = [make_event(f"evt_d{n}", shipment_id=f"shp_d{n}") for n in range(6)]
        await workers.submit(*before)
        await asyncio.sleep(0.4)  # let some jobs get between their steps
        proxy.go_down()
        await workers.submit(*during)
        await asyncio.sleep(10)
        proxy.go_up()
        keys = [q.idempotency_key for q in before + during]
        await wait_for_status(workers.db, keys, "succeeded", timeout_s=45)
    finally:
        await proxy.stop()

    for queued in before + during:
        history = await shipment_history(workers.db, queued.event.shipment.id)
        assert history == [queued.event.event_id]
    assert set((await workers.downstream.deliveries()).ok) == set(keys)
    assert all(worker.process.poll() is None for worker in workers.pool.workers)
    # The outage did reach running jobs: they were re-queued, not lost or failed.
    retried = [
        line
        for worker in workers.pool.workers
        for line in worker.log_lines()
        if line.get("event") == "job.retrying"
    ]
    assert any(line["code"] == "store_unavailable" for line in retried)


async def test_worker_survives_a_redis_restart_and_processes_new_jobs(
    workers: Workers, redis_server: RedisServer
) -> None:
    settings, (worker,) = await workers.start(1)
    await workers.submit(make_event("evt_1"), until="succeeded")

    redis_server.restart()
    await asyncio.sleep(1.0)
    assert worker.process.poll() is None
    fresh = await open_queue_pool(redis_server.url, settings.queue_name, retries=3)
    try:
        await workers.pool.wait_healthy(worker, settings)
        second = make_event("evt_2", shipment_id="shp_2")
        enqueuer = Enqueuer(fresh, settings.queue_name)
        try:
            assert await enqueuer.enqueue(second.idempotency_key, second)
        finally:
            await enqueuer.close()
        await wait_for_status(workers.db, [second.idempotency_key], "succeeded")
    finally:
        await fresh.aclose()
    assert worker.process.poll() is None


async def test_out_of_order_concurrent_events_across_workers_end_at_the_newest(
    workers: Workers,
) -> None:
    await workers.start(2)
    events: list[QueuedEvent] = [
        make_event(f"e{n}", kind, occurred_at=T0 + timedelta(minutes=n))
        for n, kind in enumerate(DELIVERY_WITH_A_RETRY)
    ]
    shuffled = random.Random(11).sample(events, len(events))
    await asyncio.gather(
        *(workers.enqueue(q) for q in shuffled),
        *(workers.enqueue(q, f"{q.idempotency_key}#again") for q in shuffled),
    )
    keys = [q.idempotency_key for q in events]
    await wait_for_status(workers.db, keys, "succeeded")

    shipment = await stored_shipment(workers.db)
    assert shipment["status"] == "delivered"
    assert shipment["last_event_at"] == events[-1].event.occurred_at
    history = [h["event_id"] for h in shipment["history"]]
    assert sorted(history) == sorted(q.event.event_id for q in events)
    assert (await workers.downstream.deliveries()).ok == dict.fromkeys(keys, 1)


async def test_init_db_twice_creates_the_indexes_then_changes_nothing(
    settings: Settings, mongo_db: AsyncDatabase[Document]
) -> None:
    env = settings_env(settings)
    code, first = await run_cli("init-db", env=env)
    assert code == 0, first
    assert "processed_events.succeeded_ttl: created" in first
    indexes = await mongo_db[PROCESSED_EVENTS].index_information()
    code, second = await run_cli("init-db", env=env)
    assert code == 0, second
    assert {line.rsplit(": ", 1)[1] for line in second.splitlines()} == {"unchanged"}
    assert await mongo_db[PROCESSED_EVENTS].index_information() == indexes
