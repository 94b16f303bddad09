"""What ``gateway chaos`` runs: its options, the gateway settings it runs with, and the
fault schedule (which fault, when, for how long), planned before anything starts."""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from msgspec import Struct

from scripts.harness.tcp_proxy import OutageMode
from scripts.proof.chaos.report import FaultKind

__all__ = ["CHAOS_ENV", "QUEUE", "SOURCE", "ChaosOptions", "PlannedFault", "plan_faults"]

SOURCE: Final = "chaos"
QUEUE: Final = "gateway:events"
CHAOS_ENV: Final[dict[str, str]] = {
    "GATEWAY_JOB_TIMEOUT_S": "5",
    "GATEWAY_LEASE_S": "8",
    "GATEWAY_MAX_ATTEMPTS": "12",
    "GATEWAY_BACKOFF_BASE_S": "1",
    "GATEWAY_BACKOFF_MULTIPLIER": "2",
    "GATEWAY_BACKOFF_CAP_S": "20",
    "GATEWAY_MONGO_TIMEOUT_S": "1",
    "GATEWAY_DOWNSTREAM_TIMEOUT_S": "2",
    "GATEWAY_WORKER_HEALTH_INTERVAL_S": "2",
    "GATEWAY_LOG_LEVEL": "INFO",
    "GATEWAY_LOG_FORMAT": "json",
}
"""Gateway settings of the chaos run (module docstring)."""
SHUTDOWN_GRACE_S: Final = 3.0
RESTART_DELAY_S: Final = 1.0
"""How long the harness, as a supervisor, waits before restarting a dead worker."""
FAULT_GAP_S: Final = 5.0
"""Least time between the end of one fault and the start of the next."""


@dataclass(frozen=True)
class ChaosOptions:
    """What ``gateway chaos`` runs (its options, one for one)."""

    duration_s: float = 180.0
    rate: float = 25.0
    workers: int = 2
    seed: int = 1
    output: Path = Path("reports/chaos")
    outage_s: float = 30.0
    redis_down_s: float = 3.0
    drain_timeout_s: float = 300.0
    mongo_outage_mode: OutageMode = OutageMode.DROP
    redis_crash: bool = False
    redis_topology: str = "single"
    """``sentinel``: primary + replica + three Sentinels, and the ``redis_primary_kill`` fault."""
    mongo_url: str | None = None
    mongo_db: str = field(default_factory=lambda: f"chaos_{uuid.uuid4().hex[:8]}")
    port: int | None = None
    downstream_latency_ms: float = 100.0
    give_up_s: float = 120.0
    gateway_env: dict[str, str] = field(default_factory=dict)
    """``GATEWAY_*`` settings overriding :data:`CHAOS_ENV` (``--set``)."""

    @property
    def settings_env(self) -> dict[str, str]:
        """The gateway settings of the run: :data:`CHAOS_ENV` with ``--set`` applied."""
        return {**CHAOS_ENV, **self.gateway_env}

    @property
    def job_timeout_s(self) -> float:
        return float(self.settings_env["GATEWAY_JOB_TIMEOUT_S"])


class PlannedFault(Struct, frozen=True, kw_only=True):
    """A fault of the schedule: what, when (seconds into the load), for how long, on what."""

    kind: FaultKind
    at_s: float
    duration_s: float
    target: int | None = None


def _fault_duration(kind: FaultKind, options: ChaosOptions) -> float:
    return {
        FaultKind.WORKER_KILL: RESTART_DELAY_S,
        FaultKind.WORKER_TERM: SHUTDOWN_GRACE_S + RESTART_DELAY_S,
        FaultKind.REDIS_RESTART: options.redis_down_s,
        FaultKind.REDIS_CRASH: options.redis_down_s,
        FaultKind.REDIS_PRIMARY_KILL: options.redis_down_s,
        FaultKind.MONGO_OUTAGE: options.outage_s,
        FaultKind.DOWNSTREAM_OUTAGE: options.outage_s,
    }[kind]


def _settle_s(kind: FaultKind, options: ChaosOptions) -> float:
    """Time left after a fault before the next one, so its recovery can be seen on its own."""
    if kind in (FaultKind.MONGO_OUTAGE, FaultKind.DOWNSTREAM_OUTAGE):
        # The backlog of an outage takes about as long to clear as it took to build.
        return max(FAULT_GAP_S, options.outage_s)
    return FAULT_GAP_S


def plan_faults(options: ChaosOptions) -> list[PlannedFault]:
    """The run's fault schedule: every kind once, in a fixed order, never overlapping.

    After a warm-up, each fault is followed by a settling time
    (:data:`FAULT_GAP_S`, or the outage's length after an outage) before the
    next one may start; the time left over is shared equally, and each fault
    starts at a ``--seed``-chosen point of its share. Raises ``ValueError``
    when ``duration_s`` cannot hold the schedule.
    """
    rng = random.Random(options.seed)
    kinds = [
        FaultKind.WORKER_KILL,
        FaultKind.REDIS_RESTART,
        FaultKind.WORKER_TERM,
        FaultKind.MONGO_OUTAGE,
        FaultKind.DOWNSTREAM_OUTAGE,
    ]
    if options.redis_crash:
        kinds.append(FaultKind.REDIS_CRASH)
    if options.redis_topology == "sentinel":
        kinds.append(FaultKind.REDIS_PRIMARY_KILL)
    warmup = min(10.0, 0.1 * options.duration_s)
    durations = [_fault_duration(kind, options) for kind in kinds]
    settles = [_settle_s(kind, options) for kind in kinds]
    needed = warmup + sum(durations) + sum(settles)
    if needed > options.duration_s:
        raise ValueError(
            f"a {options.duration_s:g} s run cannot hold the fault schedule: "
            f"it needs at least {math.ceil(needed)} s (shorten --outage or --redis-down)"
        )
    share = (options.duration_s - needed) / len(kinds)
    killed = rng.randrange(options.workers)
    targets = {
        FaultKind.WORKER_KILL: killed,
        FaultKind.WORKER_TERM: (killed + 1) % options.workers,
    }
    planned: list[PlannedFault] = []
    t = warmup
    for kind, duration, settle in zip(kinds, durations, settles, strict=True):
        start = t + rng.uniform(0.2, 0.8) * share
        planned.append(
            PlannedFault(
                kind=kind, at_s=round(start, 1), duration_s=duration, target=targets.get(kind)
            )
        )
        t += share + duration + settle
    return planned
