"""The batch claim and finish (gateway_worker.batch) leave what arq's worker leaves.

Against the test's real Redis (and MongoDB wire server for the worker runs); what
a job looks like afterwards is read with arq's own client API (``Job.status``,
``Job.result_info``), as the API and the DLQ tools read it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import Job, JobStatus
from arq.worker import JobExecutionFailed
from pymongo.asynchronous.database import AsyncDatabase

from gateway_worker.batch import (
    RETRY_KEY_TTL_S,
    ClaimedJob,
    ClaimScript,
    Finish,
    Finished,
    finish_jobs,
)
from gateway_worker.worker import BATCH_FAILED_RETRY_S, GatewayWorker, build_worker_settings
from shared.queue import JOB_FUNCTION, Enqueuer, deserialize, serialize
from shared.settings import Settings
from shared.storage.events import ProcessedEvents
from shared.storage.mongo import Document
from tests.factories import make_event
from tests.plugins.worker import stored_record

CLAIM_TTL_MS = 40_000

# arq 0.28's Worker.close() calls redis-py's deprecated close(); not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")


async def enqueue(redis: ArqRedis, queue: str, job_id: str, *, defer_s: float = 0) -> None:
    job = await redis.enqueue_job(
        JOB_FUNCTION, {"k": job_id}, _job_id=job_id, _queue_name=queue, _defer_by=defer_s or None
    )
    assert job is not None


async def claim(
    redis: ArqRedis,
    queue: str,
    job_ids: list[str],
    *,
    limit: int = 10,
    token: str = "t1",  # noqa: S107 - a claim token
) -> list[ClaimedJob]:
    script = ClaimScript(redis)
    return await script(queue, job_ids, limit=limit, claim_ttl_ms=CLAIM_TTL_MS, token=token)


async def test_claims_due_jobs_not_running_up_to_the_limit(
    redis: ArqRedis, settings: Settings
) -> None:
    queue = settings.queue_name
    for job_id in ("a", "b", "c", "d"):
        await enqueue(redis, queue, job_id)
    await enqueue(redis, queue, "later", defer_s=60)
    await redis.psetex(in_progress_key_prefix + "b", 10_000, b"1")  # another worker runs it

    claimed = await claim(redis, queue, ["a", "b", "later", "c", "d", "gone"], limit=2)

    assert [job.job_id for job in claimed] == ["a", "c"]
    for job in claimed:
        assert await redis.get(in_progress_key_prefix + job.job_id) == b"t1"
        assert 0 < await redis.pttl(in_progress_key_prefix + job.job_id) <= CLAIM_TTL_MS
        assert job.job_try == 1
        assert 0 < await redis.ttl(retry_key_prefix + job.job_id) <= RETRY_KEY_TTL_S
        assert deserialize(job.data)["a"] == [{"k": job.job_id}]
        assert job.score <= time.time() * 1000
    assert await redis.get(in_progress_key_prefix + "b") == b"1"
    assert not await redis.exists(in_progress_key_prefix + "later", in_progress_key_prefix + "d")
    # Claimed again once the claim is gone: the try counter goes on, as arq's does.
    await redis.delete(in_progress_key_prefix + "a")
    (again,) = await claim(redis, queue, ["a"], token="t2")
    assert again.job_try == 2


async def test_a_job_whose_data_expired_is_claimed_with_empty_data(
    redis: ArqRedis, settings: Settings
) -> None:
    await enqueue(redis, settings.queue_name, "x")
    await redis.delete(job_key_prefix + "x")

    (job,) = await claim(redis, settings.queue_name, ["x"])

    assert job.data == b""


def finished(job: ClaimedJob, finish: Finish, **fields: object) -> Finished:
    return Finished(
        job=job,
        finish=finish,
        function=JOB_FUNCTION,
        args=({"k": job.job_id},),
        enqueue_time_ms=job.score,
        start_ms=job.score,
        **fields,  # type: ignore[arg-type]
    )


async def test_finish_records_what_arqs_finish_records(redis: ArqRedis, settings: Settings) -> None:
    queue = settings.queue_name
    for job_id in ("ok", "again", "now", "bad"):
        await enqueue(redis, queue, job_id)
    ok, again, now, bad = await claim(redis, queue, ["ok", "again", "now", "bad"])
    score_before = await redis.zscore(queue, "again")
    assert score_before is not None

    await finish_jobs(
        redis,
        queue,
        [
            finished(ok, Finish.SUCCEEDED, result="succeeded"),
            finished(again, Finish.RETRY, defer_ms=30_000),
            finished(now, Finish.RETRY, defer_ms=None),
            finished(bad, Finish.FAILED, result=JobExecutionFailed("max 3 retries exceeded")),
        ],
        keep_result_ms=60_000,
        serializer=serialize,
    )

    done = Job("ok", redis, _queue_name=queue, _deserializer=deserialize)
    assert await done.status() is JobStatus.complete
    info = await done.result_info()
    assert info is not None
    assert info.success
    assert info.result == "succeeded"
    assert info.job_try == 1
    assert info.function == JOB_FUNCTION
    assert not await redis.exists(
        job_key_prefix + "ok", retry_key_prefix + "ok", in_progress_key_prefix + "ok"
    )
    assert await redis.zscore(queue, "ok") is None
    assert 0 < await redis.pttl("arq:result:ok") <= 60_000

    # Re-scored 30 s later, claim released, job and try counter kept.
    score_after = await redis.zscore(queue, "again")
    assert score_after is not None
    assert score_after - score_before >= 30_000
    assert not await redis.exists(in_progress_key_prefix + "again")
    assert await redis.exists(job_key_prefix + "again", retry_key_prefix + "again") == 2
    assert await Job("again", redis, _queue_name=queue).status() is JobStatus.deferred

    # Due again at once.
    assert await redis.zscore(queue, "now") is not None
    assert not await redis.exists(in_progress_key_prefix + "now")
    assert await Job("now", redis, _queue_name=queue).status() is JobStatus.queued

    failed = Job("bad", redis, _queue_name=queue, _deserializer=deserialize)
    assert await failed.status() is JobStatus.complete
    failure = await failed.result_info()
    assert failure is not None
    assert not failure.success
    assert await redis.zscore(queue, "bad") is None


# ---- a real GatewayWorker (burst mode, in process) running batches ---------------------------


async def burst(settings: Settings, **overrides: Any) -> GatewayWorker:
    options = {**build_worker_settings(settings, worker_id="batch"), **overrides}
    worker = GatewayWorker(**options, burst=True, handle_signals=False)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


async def test_a_worker_drains_more_jobs_than_it_has_room_for_in_batches(
    redis: ArqRedis,
    worker_settings: Callable[..., Settings],
    mongo_db: AsyncDatabase[Document],
) -> None:
    settings = worker_settings(worker_concurrency=6, worker_batch=3, mongo_db=mongo_db.name)
    enqueuer = Enqueuer(redis, settings.queue_name)
    events = [make_event(f"e{i}", shipment_id=f"shp_{i % 4}") for i in range(20)]
    for queued in events:
        assert await enqueuer.enqueue(queued.idempotency_key, queued)

    worker = await burst(settings)

    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (20, 0, 0)
    for queued in events:
        info = await Job(queued.idempotency_key, redis, _deserializer=deserialize).result_info()
        assert info is not None
        assert (info.success, info.result, info.job_try) == (True, "succeeded", 1)
        assert (await stored_record(mongo_db, queued.idempotency_key)).status == "succeeded"
    assert await redis.zcard(settings.queue_name) == 0
    assert not [key async for key in redis.scan_iter(match="arq:in-progress:*")]


async def test_a_job_past_max_tries_or_expired_fails_as_arq_fails_it_and_others_run(
    redis: ArqRedis,
    worker_settings: Callable[..., Settings],
    mongo_db: AsyncDatabase[Document],
) -> None:
    settings = worker_settings(worker_batch=5, mongo_db=mongo_db.name)
    enqueuer = Enqueuer(redis, settings.queue_name)
    tired, expired, fine = (make_event(name) for name in ("tired", "expired", "fine"))
    for queued in (tired, expired, fine):
        assert await enqueuer.enqueue(queued.idempotency_key, queued)
    max_tries = build_worker_settings(settings)["max_tries"]
    await redis.set(retry_key_prefix + tired.idempotency_key, max_tries)
    await redis.delete(job_key_prefix + expired.idempotency_key)

    worker = await burst(settings)

    assert (worker.jobs_complete, worker.jobs_failed) == (1, 2)
    results = {}
    for queued in (tired, expired, fine):
        info = await Job(queued.idempotency_key, redis, _deserializer=deserialize).result_info()
        assert info is not None
        results[queued.event_id] = (info.success, str(info.result))
    assert results == {
        "tired": (False, f"JobExecutionFailed: max {max_tries} retries exceeded"),
        "expired": (False, "JobExecutionFailed: job expired"),
        "fine": (True, "succeeded"),
    }
    assert await ProcessedEvents(mongo_db).get(tired.idempotency_key) is None
    assert await redis.zcard(settings.queue_name) == 0


class Broken:
    """A batch processor with a defect."""

    async def process_batch(self, jobs: Sequence[tuple[str, int, Any]]) -> list[object]:
        raise RuntimeError("a defect")


async def test_a_batch_whose_processor_raises_is_run_again_later_never_failed(
    redis: ArqRedis, worker_settings: Callable[..., Settings]
) -> None:
    settings = worker_settings(worker_batch=5)
    enqueuer = Enqueuer(redis, settings.queue_name)
    events = [make_event(f"e{i}") for i in range(2)]
    for queued in events:
        assert await enqueuer.enqueue(queued.idempotency_key, queued)

    async def startup(ctx: dict[Any, Any]) -> None:
        ctx["processor"] = Broken()

    before_ms = time.time() * 1000
    worker = await burst(settings, on_startup=startup, on_shutdown=None, max_burst_jobs=2)

    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (0, 0, 2)
    for queued in events:
        score = await redis.zscore(settings.queue_name, queued.idempotency_key)
        assert score is not None
        assert score >= before_ms + BATCH_FAILED_RETRY_S * 1000
        assert not await redis.exists(f"arq:result:{queued.idempotency_key}")
    assert not [key async for key in redis.scan_iter(match="arq:in-progress:*")]
