"""arq jobs claimed and finished in batches: one Redis round trip each way per batch.

arq 0.28 spends about six Redis round trips on every job: ``WATCH`` /
``EXISTS`` / ``ZSCORE`` / ``MULTI`` ``PSETEX`` ``EXEC`` to claim it, one
pipeline to read it and count the try, one transaction to finish it — 0.6–0.7
ms of worker CPU per job before our job does anything (docs/profiles/). Here
the jobs a poll finds due are claimed together and finished together, with the
same keys, values and expiries arq uses, so arq's clients (the API's enqueue,
``Job.status``/``result``, the DLQ tools) see exactly what arq's worker leaves:

* :class:`ClaimScript`: one script claims every listed job that is due and not
  running (arq's check and ``PSETEX`` of the in-progress key, atomically per
  job), counts its try and reads it — arq's ``start_jobs`` plus the first
  pipeline of its ``run_job``. The in-progress value is the batch's token (arq
  writes ``1``; nothing reads it but :mod:`gateway_worker.claim`);
* :func:`finish_jobs`: one ``MULTI``/``EXEC`` records every outcome as arq's
  ``finish_job`` / ``finish_failed_job`` would: a result (arq's own
  ``serialize_result``) and the job's keys deleted, or a retry re-scored.

What a job *is* (its MessagePack form, the result format, the try counter's
name and expiry) stays arq's; what runs between claim and finish is
:class:`~gateway_worker.worker.GatewayWorker`'s (docs/decisions.md, "Worker CPU
per event").
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, Final

from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_result
from arq.utils import timestamp_ms
from msgspec import Struct
from redis.asyncio import Redis

__all__ = [
    "RETRY_KEY_TTL_S",
    "ClaimScript",
    "ClaimedJob",
    "Finish",
    "Finished",
    "finish_jobs",
]

RETRY_KEY_TTL_S: Final = 88_400
"""Expiry arq gives a job's try counter (arq 0.28 ``run_job``)."""

# KEYS[1]: the queue; then, per job, its in-progress, job and retry keys.
# ARGV: now (ms), claim life (ms), token, retry counter's life (s), most jobs to
# claim, the job ids. Per job, arq's own claim condition (in the queue, due, not
# in progress).
_CLAIM: Final = """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[5])
local claimed = {}
for i = 1, (#KEYS - 1) / 3 do
  if #claimed >= limit then break end
  local id = ARGV[5 + i]
  local progress, job, tries = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now and redis.call('EXISTS', progress) == 0 then
    redis.call('SET', progress, ARGV[3], 'PX', ARGV[2])
    local try = redis.call('INCR', tries)
    redis.call('EXPIRE', tries, ARGV[4])
    claimed[#claimed + 1] = {id, score, redis.call('GET', job) or '', try}
  end
end
return claimed
"""


class ClaimedJob(Struct, frozen=True):
    """A job this batch holds: arq's ``run_job`` inputs."""

    job_id: str
    score: int
    data: bytes
    """The job as arq stored it; empty when it expired before it was claimed."""
    job_try: int


class Finish(enum.Enum):
    """How a job's run ends in Redis (arq's three cases)."""

    SUCCEEDED = "succeeded"
    """Result stored, job removed (arq: ``finish=True``, ``success=True``)."""
    FAILED = "failed"
    """Failure stored, job removed (arq: ``finish_failed_job`` or ``finish=True``)."""
    RETRY = "retry"
    """Claim released, job re-scored ``defer_ms`` later (or due now)."""


class Finished(Struct, frozen=True, kw_only=True):
    """One job's outcome, ready for :func:`finish_jobs`."""

    job: ClaimedJob
    finish: Finish
    result: Any = None
    """The function's return value, or the exception arq would store."""
    defer_ms: int | None = None
    function: str = "<unknown>"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    enqueue_time_ms: int = 0
    start_ms: int = 0


class ClaimScript:
    """The claim script, loaded once per connection pool (``EVALSHA``, reloaded on ``NOSCRIPT``)."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_CLAIM)

    async def __call__(
        self,
        queue_name: str,
        job_ids: Sequence[str],
        *,
        limit: int,
        claim_ttl_ms: int,
        token: str,
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` of ``job_ids`` that are due and not running; one round trip."""
        if not job_ids or limit < 1:
            return []
        keys = [queue_name]
        for job_id in job_ids:
            keys += [in_progress_key_prefix + job_id, job_key_prefix + job_id]
            keys.append(retry_key_prefix + job_id)
        args: list[str | int] = [timestamp_ms(), claim_ttl_ms, token, RETRY_KEY_TTL_S, limit]
        args += job_ids
        rows = await self._script(keys=keys, args=args)
        return [
            ClaimedJob(
                job_id=_text(job_id),
                score=int(float(score)),
                data=data if isinstance(data, bytes) else str(data).encode(),
                job_try=int(job_try),
            )
            for job_id, score, data, job_try in rows
        ]


async def finish_jobs(
    redis: Redis,
    queue_name: str,
    finished: Sequence[Finished],
    *,
    keep_result_ms: int,
    serializer: Callable[[Any], bytes],
) -> None:
    """Record every outcome in one ``MULTI``/``EXEC``, as arq's finish does per job."""
    if not finished:
        return
    now_ms = timestamp_ms()
    async with redis.pipeline(transaction=True) as tx:
        removed: list[str] = []
        for done in finished:
            job = done.job
            if done.finish is Finish.RETRY:
                tx.delete(in_progress_key_prefix + job.job_id)
                if done.defer_ms:
                    # arq: the defer counted from now, added to the job's score.
                    tx.zincrby(queue_name, done.defer_ms + (now_ms - job.score), job.job_id)
                continue
            result = serialize_result(
                done.function,
                done.args,
                done.kwargs,
                job.job_try,
                done.enqueue_time_ms,
                done.finish is Finish.SUCCEEDED,
                done.result,
                done.start_ms or now_ms,
                now_ms,
                f"{job.job_id}:{done.function}",
                queue_name,
                job_id=job.job_id,
                serializer=serializer,
            )
            if result is not None:
                tx.set(result_key_prefix + job.job_id, result, px=keep_result_ms)
            tx.delete(
                retry_key_prefix + job.job_id,
                in_progress_key_prefix + job.job_id,
                job_key_prefix + job.job_id,
            )
            removed.append(job.job_id)
        if removed:
            tx.zrem(abort_jobs_ss, *removed)
            tx.zrem(queue_name, *removed)
        await tx.execute()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
