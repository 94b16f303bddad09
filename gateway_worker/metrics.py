"""A worker's Prometheus metrics (docs/contract.md §3.2), in a registry of its own.

Each worker process serves them on ``GATEWAY_WORKER_METRICS_PORT``
(0 picks a free port, which is logged).
"""

from __future__ import annotations

import asyncio
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from shared.metrics import Families

__all__ = ["JOB_OUTCOMES", "MetricsServer", "WorkerMetrics"]

JOB_OUTCOMES = ("succeeded", "duplicate", "retried", "dead_lettered", "deferred", "cancelled")
"""Values of ``gateway_worker_jobs_total{outcome}``; ``cancelled`` is a run cut off
by shutdown or arq's timeout (re-run, not a failed attempt)."""

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_HELP = {
    "gateway_worker_jobs": "Job runs by how they ended.",
    "gateway_worker_retries": "Runs that ended in a retry, by error code.",
    "gateway_worker_dead_letters": "Events dead-lettered, by reason and error code.",
    "gateway_worker_job_duration_seconds": "Wall time of one job run.",
    "gateway_queue_depth": "Jobs in the queue (due and deferred), sampled every health interval.",
    "gateway_events_duplicate": "Events recognised as duplicates, by source and stage.",
    "gateway_worker_unmapped_statuses": (
        "Carrier tracking updates whose status is outside the source's vocabulary."
    ),
}
"""Each metric family's help text (``# HELP``), by name."""


class WorkerMetrics:
    """The counters, histogram and gauges one worker process updates."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        families = Families(self.registry, _HELP)
        self.jobs = families.counter("gateway_worker_jobs", "outcome")
        self.retries = families.counter("gateway_worker_retries", "code")
        self.dead_letters = families.counter("gateway_worker_dead_letters", "reason", "code")
        self.job_duration = families.histogram(
            "gateway_worker_job_duration_seconds", buckets=_DURATION_BUCKETS
        )
        self.queue_depth = families.gauge("gateway_queue_depth")
        self.duplicates = families.counter("gateway_events_duplicate", "source", "stage")
        self.unmapped_statuses = families.counter(
            "gateway_worker_unmapped_statuses", "source", "adapter"
        )
        for outcome in JOB_OUTCOMES:
            self.jobs.labels(outcome=outcome)


class MetricsServer:
    """prometheus_client's threaded HTTP server for one registry."""

    def __init__(self, server: WSGIServer) -> None:
        self._server = server

    @classmethod
    def start(cls, registry: CollectorRegistry, *, host: str, port: int) -> MetricsServer:
        """Serve ``registry`` on ``host:port`` from a daemon thread."""
        server, _thread = start_http_server(port, addr=host, registry=registry)
        return cls(server)

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        return int(self._server.server_port)

    async def stop(self) -> None:
        """Stop serving; ``shutdown`` blocks until the serving thread notices, so off-loop."""
        await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()
