"""A job's arq claim on ``GATEWAY_ACK_REPLICAS`` replicas before it acts (docs/contract.md §4.5).

arq claims a job by writing its in-progress key (``arq:in-progress:{job id}``,
value ``1``) on the primary; replication is asynchronous, so a failover can
lose the claim, and the promoted replica then lets another worker claim the
job while its first run is still going (arq records ``job expired`` or a
``KeyError`` for it). With ``GATEWAY_ACK_REPLICAS`` = n > 0,
:func:`claim_replicated` runs between arq's claim and arq's run of the job, in
one round trip: a script writes this run's token into the claim if it still
holds arq's ``1`` (or the token already), then ``WAIT n`` on the same
connection. ``WAIT`` confirms the connection's last write, and replication is
ordered, so it also confirms the claim before it.

* confirmed → the job runs (arq's ``run_job``);
* fewer than n replicas within :data:`WAIT_STEP_MS` → wait again (each step
  renews the claim's expiry), for at most the job timeout; then the run steps
  aside: the claim stays until it expires (arq's ``in_progress_timeout_s``) and
  the job runs again then. The API refuses new events with 503 meanwhile, so
  only jobs accepted before the replica went away wait;
* the claim is gone (lost in a failover) or holds another run's token → this
  run steps aside without touching arq's records (arq's own exits would
  delete the other run's claim or re-queue a finished job).

Nothing has acted before the claim is confirmed, so stepping aside is always
safe. A failover between arq's claim and this check can still let a second
worker claim the job; whichever run writes its token first runs it, the other
steps aside.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Final

import structlog
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.exceptions import RedisError

__all__ = ["ARQ_CLAIM", "WAIT_STEP_MS", "claim_replicated", "confirm_claims"]

ARQ_CLAIM: Final = "1"
"""What arq's ``Worker.start_jobs`` writes to the in-progress key (arq 0.28)."""
WAIT_STEP_MS: Final = 1000
"""One ``WAIT``'s timeout; below every client's socket timeout (5 s)."""

# Per key: takes the claim over only from arq's fresh claim or from this run itself.
_TAKE_OVER: Final = """
local held = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value == ARGV[1] or value == ARGV[2] then
    redis.call('SET', key, ARGV[2], 'PX', ARGV[3])
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
"""

log = structlog.get_logger("gateway_worker")


async def claim_replicated(
    redis: ArqRedis, job_id: str, *, replicas: int, claim_ttl_s: float, patience_s: float
) -> bool:
    """Whether this run holds ``job_id``'s claim on ``replicas`` replicas and may run it.

    ``claim_ttl_s`` is the claim's expiry arq set (renewed on every step);
    ``patience_s`` bounds the wait for replicas. ``False``: step aside, touching
    nothing more (see the module docstring).
    """
    held = await confirm_claims(
        redis,
        [job_id],
        token=uuid.uuid4().hex[:12],
        replicas=replicas,
        claim_ttl_s=claim_ttl_s,
        patience_s=patience_s,
    )
    return bool(held)


async def confirm_claims(
    redis: ArqRedis,
    job_ids: Sequence[str],
    *,
    token: str,
    replicas: int,
    claim_ttl_s: float,
    patience_s: float,
) -> list[str]:
    """Those of ``job_ids`` whose claims hold ``token`` (or arq's ``1``, taken over) on
    ``replicas`` replicas; ``[]`` when not confirmed within ``patience_s``.

    One round trip per step for every job: a batch of jobs (gateway_worker.batch)
    waits for its replicas once.
    """
    keys = [in_progress_key_prefix + job_id for job_id in job_ids]
    ttl_ms = str(int(claim_ttl_s * 1000))
    give_up_at = time.monotonic() + patience_s
    while True:
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.eval(_TAKE_OVER, len(keys), *keys, ARQ_CLAIM, token, ttl_ms)
                pipe.wait(replicas, WAIT_STEP_MS)
                flags, acked = await pipe.execute()
        except RedisError as exc:
            # redis-py has already retried; the claims expire and the jobs run again.
            error = f"{type(exc).__name__}: {exc}"
            for job_id in job_ids:
                log.warning("job.claim_unconfirmed", job_id=job_id, error=error)
            return []
        held = [job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag]
        for job_id, flag in zip(job_ids, flags, strict=True):
            if not flag:
                log.warning("job.claim_not_held", job_id=job_id)
        if not held:
            return []
        if acked >= replicas:
            return held
        waited = time.monotonic() >= give_up_at
        for job_id in held:
            if waited:
                log.warning(
                    "job.claim_unreplicated",
                    job_id=job_id,
                    replicas=replicas,
                    acked=acked,
                    waited=True,
                )
            else:
                log.info("job.claim_waiting", job_id=job_id, replicas=replicas, acked=acked)
        if waited:
            return []
