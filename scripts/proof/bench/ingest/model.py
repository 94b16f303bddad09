"""What ``gateway bench-ingest`` measures and reports: its options, targets and results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import click
import msgspec

from scripts.traffic.carriers import CARRIER_ADAPTERS

__all__ = [
    "BARE",
    "CANONICAL",
    "FACTORIES",
    "ROUTES",
    "BenchError",
    "BenchOptions",
    "BenchReport",
    "RoundFigures",
    "RunResult",
    "Target",
    "TargetProfile",
    "TargetSummary",
    "Verdict",
    "WrkStats",
    "targets_of",
]

FACTORIES: Final = {
    "bare": "scripts.proof.bench.apps:create_bare_app",
    "ingest": "scripts.proof.bench.apps:create_gateway_app",
}
"""uvicorn factories of the bare endpoint and of the real gateway app."""
ROUTES: Final = ("standard", *CARRIER_ADAPTERS)
"""Adapters whose ingest route can be measured: the canonical one and the simulated carriers'."""
SOURCE = "bench"
QUEUE_NAME = "gateway:bench"
TARGET_RATIO = 0.60
TARGET_P99_MS = 50.0
TARGET_CPU_RATIO = 1.5
# Requests signed per wrk invocation when --pool is not given: comfortably
# above what one core serves (a bare Litestar endpoint does ~16k/s here).
POOL_RATE_PER_S = 40_000
SIGNATURE_TOLERANCE_S = 300
"""The gateway's default ``GATEWAY_SIGNATURE_TOLERANCE_S``: how long a signed pool stays valid."""
TARGET_START_S = 30
"""Allowance for starting, probing and stopping a server, on top of its wrk runs."""
STATUS_MARKER = "BENCH_STATUS"
# Below this share of its core the server was starved by something else on the
# machine (the shared 2-core box), and the run measures that, not the app.
MIN_SERVER_CPU_PCT = 75.0


class BenchError(click.ClickException):
    """The benchmark could not produce trustworthy numbers."""


@dataclass(frozen=True)
class BenchOptions:
    """How to run the benchmark; defaults are the documented measurement."""

    rounds: int = 3
    """Every target is measured once per round, in alternating order."""
    duration_s: int = 10
    """Seconds of each measured wrk run."""
    warmup_s: int = 10
    """Seconds of wrk before each measured run (0: none); its jobs are flushed."""
    # Where each process runs (``taskset -c`` lists; None leaves it unpinned).
    server_cpus: str | None = "0"
    redis_cpus: str | None = "1"
    """The benchmark's redis-server and its replicas."""
    client_cpus: str | None = "1"
    # What wrk sends.
    connections: int = 100
    threads: int = 2
    """wrk's threads; each replays its own file of signed requests."""
    pool: int | None = None
    """Signed requests per wrk invocation; default POOL_RATE_PER_S × the longest run."""
    routes: tuple[str, ...] = ()
    """Adapter routes measured beside the canonical one (``ROUTES``), each its own target."""
    # What serves it.
    server_workers: int = 1
    ingest_factory: str = FACTORIES["ingest"]
    """uvicorn factory of the gateway targets (the bare app, to test the harness)."""
    ack_replicas: int = 0
    """n > 0: attach n replicas to the benchmark's Redis and also measure the
    canonical route with ``GATEWAY_ACK_REPLICAS=n``."""
    profile: bool = False
    """Then profile the bare and the canonical server with py-spy."""
    output: Path | None = None


@dataclass(frozen=True)
class Target:
    """One server measured in every round: the bare endpoint, or the gateway on one route."""

    name: str
    route: str = "standard"
    """The adapter the requests are signed and shaped for (``ROUTES``)."""
    ack_replicas: int = 0
    """``GATEWAY_ACK_REPLICAS`` of the server."""

    @property
    def bare(self) -> bool:
        return self.name == BARE.name


BARE: Final = Target("bare")
CANONICAL: Final = Target("ingest")
"""The target of docs/contract.md §6: the canonical route, plain acknowledgement."""


def targets_of(options: BenchOptions) -> list[Target]:
    """The targets of a run, in the order of its odd rounds (even rounds reverse it).

    The canonical route is always measured, so ``--route standard`` adds nothing.
    """
    targets = [BARE, CANONICAL]
    for route in dict.fromkeys(options.routes):
        if route != CANONICAL.route:
            targets.append(Target(f"ingest-{route}", route=route))
    if options.ack_replicas:
        n = options.ack_replicas
        targets.append(Target(f"ingest-ack{n}", ack_replicas=n))
    return targets


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
    target: str
    wrk: WrkStats
    enqueued: int
    """Jobs in the queue after the run (the bare target enqueues none)."""
    cpu_pct: dict[str, float]
    """CPU used during the measured run by ``server``, ``redis`` (with its replicas) and
    ``wrk``, in % of one core."""
    load_avg_1m: float
    server_us_per_request: float = 0.0
    """Server CPU time (user + system, with its children) per request wrk counted."""
    wait_calls: int = 0
    """``WAIT`` commands Redis served during the run (one per batch with ``--ack-replicas``)."""

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
    server_us_per_request: float = 0.0


class RoundFigures(msgspec.Struct, frozen=True):
    """One gateway target in one round, against that round's bare endpoint."""

    round: int
    ratio: float
    """Requests/s ÷ the bare endpoint's (target ≥ TARGET_RATIO)."""
    cpu_ratio: float
    """Server CPU µs per request ÷ the bare endpoint's (target ≤ TARGET_CPU_RATIO)."""
    p99_ms: float
    """The target's own p99 (target < TARGET_P99_MS)."""


class Verdict(msgspec.Struct, frozen=True):
    """One target of docs/contract.md §6 for one gateway target, met or missed."""

    target: str
    criterion: str
    """``ratio`` (≥ limit), ``p99_ms`` (< limit) or ``cpu_ratio`` (≤ limit)."""
    scope: str
    """``every round`` (``value`` is the worst round) or ``median`` (of the rounds)."""
    limit: float
    value: float
    passed: bool


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
    options: dict[str, str | int | bool | list[str] | None]
    runs: list[RunResult]
    ratios: list[float]
    """The canonical target's requests/s ratio per round."""
    median: dict[str, TargetSummary]
    median_ratio: float
    passed: bool
    """Every verdict of the canonical target (``ingest``) is met."""
    non_2xx: int
    disturbed_rounds: list[int]
    """Rounds in which a server got under MIN_SERVER_CPU_PCT of its core: rerun those."""
    profile: dict[str, TargetProfile] | None = None
    rounds: dict[str, list[RoundFigures]] = msgspec.field(default_factory=dict)
    """Per gateway target, its figures in each round."""
    verdicts: list[Verdict] = msgspec.field(default_factory=list)
