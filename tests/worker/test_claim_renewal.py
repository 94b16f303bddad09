"""A run keeps its arq claim (the in-progress key) for as long as it lives
(``GatewayWorker.run_job``, docs/reliability.md).

A real :class:`~gateway_worker.worker.GatewayWorker` runs in this process
(burst mode) against the test's Redis and MongoDB; its one job holds in the
delivery step until the test lets it go.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from pymongo.asynchronous.database import AsyncDatabase

from gateway_worker import worker as worker_module
from gateway_worker.jobs import EventProcessor
from gateway_worker.worker import GatewayWorker, build_worker_settings, on_startup
from shared.settings import Settings
from shared.storage.mongo import Document
from tests.factories import make_event
from tests.plugins.worker import stored_record
from tests.worker.test_processor import Blocking

# arq's in_progress_timeout_s is job_timeout + 10 s; the job timeout must stay
# far above the run (its own deadline and arq's would cut it off), so the
# claim's life is set on the worker directly, short enough to outlive quickly.
CLAIM_TTL_S = 1.5

# arq 0.28's Worker.close() calls redis-py's deprecated close(); not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")


def burst_worker(settings: Settings, processor: EventProcessor) -> GatewayWorker:
    async def startup(ctx: dict[Any, Any]) -> None:
        await on_startup(ctx)
        ctx["processor"] = processor

    options = {**build_worker_settings(settings, worker_id="renewal"), "on_startup": startup}
    worker = GatewayWorker(**options, burst=True, handle_signals=False)
    worker.in_progress_timeout_s = CLAIM_TTL_S
    return worker


@dataclass
class BlockedRun:
    """A real worker's run of one job, held in its delivery step."""

    worker: GatewayWorker
    running: asyncio.Task[Any]
    deliverer: Blocking
    claim: str
    key: str


@pytest.fixture
async def blocked_run(
    enqueue: Callable[..., Awaitable[bool]],
    worker_settings: Callable[..., Settings],
    make_processor: Callable[..., EventProcessor],
) -> AsyncIterator[BlockedRun]:
    settings = worker_settings(job_timeout_s=60.0, lease_s=90.0)
    deliverer = Blocking()
    worker = burst_worker(settings, make_processor(settings, downstream=deliverer))
    queued = make_event()
    assert await enqueue(queued)
    running = asyncio.create_task(worker.main())
    try:
        await asyncio.wait_for(deliverer.entered.wait(), timeout=30)
        claim = in_progress_key_prefix + queued.idempotency_key
        yield BlockedRun(worker, running, deliverer, claim, queued.idempotency_key)
    finally:
        deliverer.release.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(running, timeout=30)
        await worker.close()


async def test_a_run_longer_than_its_claims_life_keeps_the_claim_until_it_ends(
    redis: ArqRedis, mongo_db: AsyncDatabase[Document], blocked_run: BlockedRun
) -> None:
    # Sampled over twice the claim's life: without renewal it expires meanwhile.
    watched_until = time.monotonic() + 2 * CLAIM_TTL_S
    samples = 0
    while time.monotonic() < watched_until or samples < 10:
        pttl = await redis.pttl(blocked_run.claim)
        assert pttl > 0, f"the claim vanished under the live run ({samples})"
        samples += 1
        await asyncio.sleep(0.1)
    blocked_run.deliverer.release.set()
    await asyncio.wait_for(blocked_run.running, timeout=30)

    assert await redis.exists(blocked_run.claim) == 0, "arq's finish deletes the claim for good"
    assert (blocked_run.worker.jobs_complete, blocked_run.worker.jobs_failed) == (1, 0)
    record = await stored_record(mongo_db, blocked_run.key)
    assert (record.status, record.attempts) == ("succeeded", 0)


@pytest.fixture
def one_renewal(monkeypatch: pytest.MonkeyPatch) -> None:
    """One renewal instead of six: the claim's life is then 1.5 × CLAIM_TTL_S."""
    monkeypatch.setattr(worker_module._ClaimRenewal, "MAX_RENEWALS", 1)


async def test_renewal_stops_after_its_bound_so_a_run_that_never_returns_loses_its_claim(
    redis: ArqRedis, one_renewal: None, blocked_run: BlockedRun
) -> None:
    for _ in range(int(4 * CLAIM_TTL_S / 0.1)):
        if not await redis.exists(blocked_run.claim):
            break
        await asyncio.sleep(0.1)
    assert await redis.exists(blocked_run.claim) == 0, "the claim outlived its bounded renewals"
    assert not blocked_run.running.done(), "the run was still alive when its claim expired"
