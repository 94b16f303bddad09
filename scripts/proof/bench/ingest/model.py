"""What ``gateway bench-ingest`` measures and reports: its options, targets and results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click
import msgspec

__all__ = [
    "TARGET_FACTORIES",
    "BenchError",
    "BenchOptions",
    "BenchReport",
    "RunResult",
    "Target",
    "TargetProfile",
    "TargetSummary",
    "WrkStats",
]

Target = Literal["bare", "ingest"]
TARGET_FACTORIES: dict[Target, str] = {
    "bare": "scripts.proof.bench.apps:create_bare_app",
    "ingest": "scripts.proof.bench.apps:create_gateway_app",
}
SOURCE = "bench"
QUEUE_NAME = "gateway:bench"
TARGET_RATIO = 0.60
TARGET_P99_MS = 50.0
# Requests signed per wrk invocation when --pool is not given: comfortably
# above what one core serves (a bare Litestar endpoint does ~16k/s here).
POOL_RATE_PER_S = 40_000
STATUS_MARKER = "BENCH_STATUS"
# Below this share of its core the server was starved by something else on the
# machine (the shared 2-core box), and the run measures that, not the app.
MIN_SERVER_CPU_PCT = 75.0


class BenchError(click.ClickException):
    """The benchmark could not produce trustworthy numbers."""


@dataclass(frozen=True)
class BenchOptions:
    """How to run the benchmark; defaults are the documented measurement."""

    duration_s: int = 10
    warmup_s: int = 10
    rounds: int = 3
    connections: int = 100
    threads: int = 2
    server_workers: int = 1
    server_cpus: str | None = "0"
    """CPUs for uvicorn (a ``taskset -c`` list); None leaves it unpinned."""
    redis_cpus: str | None = "1"
    """CPUs for redis-server; None leaves it unpinned."""
    client_cpus: str | None = "1"
    """CPUs for wrk; None leaves it unpinned."""
    pool: int | None = None
    """Signed requests per wrk invocation; default POOL_RATE_PER_S × the longest run."""
    profile: bool = False
    ingest_factory: str = TARGET_FACTORIES["ingest"]
    """uvicorn factory of the measured target (the bare app, to test the harness)."""
    output: Path | None = None


class WrkStats(msgspec.Struct, frozen=True):
    """What one wrk run printed."""

    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx_3xx: int
    status_202: int
    status_200: int
    status_other_2xx: int
    status_other: int
    pool_wraps: int


class RunResult(msgspec.Struct, frozen=True):
    """One measured run of one target."""

    round: int
    target: Target
    wrk: WrkStats
    enqueued: int
    """Jobs in the queue after the run (the bare target enqueues none)."""
    cpu_pct: dict[str, float]
    """CPU used during the measured run by ``server``, ``redis`` and ``wrk``, in % of one core."""
    load_avg_1m: float

    @property
    def non_2xx(self) -> int:
        return self.wrk.status_other + self.wrk.socket_errors

    @property
    def disturbed(self) -> bool:
        """The server, CPU-bound by design at 100 connections, got too little of its core."""
        return self.cpu_pct["server"] < MIN_SERVER_CPU_PCT


class TargetSummary(msgspec.Struct, frozen=True):
    requests_per_s: float
    p50_ms: float
    p99_ms: float


class TargetProfile(msgspec.Struct, frozen=True):
    """Where one target's server spends its CPU, from py-spy samples of one run.

    Shares are percentages of the samples; multiplied by ``us_per_request``
    they give CPU microseconds per request.
    """

    requests_per_s: float
    server_cpu_pct: float
    us_per_request: float
    """Server CPU time (user + system) per request answered."""
    packages: list[tuple[str, float]]
    self_time: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]


class BenchReport(msgspec.Struct, frozen=True):
    """Everything a run measured, as written to ``bench_ingest.json``."""

    started_at: str
    machine: dict[str, str | int]
    options: dict[str, str | int | bool | None]
    runs: list[RunResult]
    ratios: list[float]
    median: dict[str, TargetSummary]
    median_ratio: float
    passed: bool
    non_2xx: int
    disturbed_rounds: list[int]
    """Rounds in which a server got under MIN_SERVER_CPU_PCT of its core: rerun those."""
    profile: dict[str, TargetProfile] | None = None
