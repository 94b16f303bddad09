"""The arq floor of ``gateway bench-worker``: a worker process whose job does nothing.

``python -m scripts.proof.bench.worker_floor`` runs exactly what ``gateway
worker`` runs — the settings from ``GATEWAY_*``, :func:`build_worker_settings`,
:func:`run_worker` (same event loop, Redis client, serializer, result keeping,
health key, poll delay, concurrency) — except that the job function returns
``"succeeded"`` without touching MongoDB or anything else, and no MongoDB
client, metrics server or queue-depth sampler is opened. Its CPU per job is
what the queue machinery costs on its own; the product's worker costs that
plus our job.

With ``GATEWAY_WORKER_BATCH`` = 1 that machinery is arq's own (a job claimed,
run and finished at a time); above 1 it is the worker's batched claim and
finish (gateway_worker.batch), and the batch's processor does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from arq.worker import func

from gateway_worker.jobs import JobResult
from gateway_worker.worker import build_worker_settings, run_worker
from shared.logging import configure_logging
from shared.queue import JOB_FUNCTION
from shared.settings import settings_from_env

__all__ = ["NoOpBatch", "no_op_job"]


async def no_op_job(ctx: dict[Any, Any], payload: Any) -> str:
    """Stands in for ``process_event``: the same result, no work."""
    return JobResult.SUCCEEDED.value


class NoOpBatch:
    """Stands in for the batch's :class:`~gateway_worker.jobs.EventProcessor`."""

    async def process_batch(self, jobs: Sequence[tuple[str, int, Any]]) -> list[str]:
        return [JobResult.SUCCEEDED.value] * len(jobs)


async def _startup(ctx: dict[Any, Any]) -> None:
    ctx["processor"] = NoOpBatch()


def main() -> None:
    settings = settings_from_env()
    configure_logging(settings.log_level, settings.log_format, process="worker-floor")
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
    options = build_worker_settings(settings)
    options.update(
        functions=[func(no_op_job, name=JOB_FUNCTION)], on_startup=_startup, on_shutdown=None
    )
    run_worker(options)


if __name__ == "__main__":
    main()
