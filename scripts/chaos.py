"""``gateway chaos``: load plus injected faults, then the invariants of SPEC §6.

One command (``docs/reliability.md`` has the fault model and a real report):

1. starts the whole gateway here (``scripts/stack.py``): Redis with an AOF on
   disk, MongoDB (embedded, or ``--mongo-url``) behind a TCP proxy the
   harness can cut, ``gateway init-db``, the API, ``--workers`` workers and
   the mock downstream (signature checking on, ``--downstream-latency-ms``
   per delivery so jobs are in flight when a worker is killed);
2. drives it with :class:`~scripts.chaos_driver.ChaosDriver` at ``--rate``
   events/s for ``--duration`` seconds: signed at send time, retried like a
   courier on 503 and connection errors;
3. meanwhile injects, on a schedule spread over the run (reproducible with
   ``--seed``): a worker SIGKILL (restarted a second later, as a supervisor
   would), a worker SIGTERM (restarted once it exited), a Redis restart from
   its AOF (SIGTERM, ``--redis-down`` seconds down, start), a MongoDB
   outage of ``--outage`` seconds (the proxy drops or blackholes every
   connection), and a downstream outage of ``--outage`` seconds (the mock
   process is stopped: connections refused); with ``--redis-crash`` also a
   Redis SIGKILL, and then Redis runs with ``appendfsync always``;
4. stops the load, waits for the queue to drain (``--drain-timeout``), reads
   MongoDB, Redis and the downstream's records, checks the invariants
   (:mod:`scripts.chaos_report`), writes ``report.md`` and ``report.json``
   (and every process's log under ``logs/``) to ``--output``, and exits 1 on
   any violation.

The gateway runs with timings scaled for a short run (``CHAOS_ENV``): a job
timeout of 5 s (a SIGKILLed worker's jobs re-run after 15 s), a lease of 8 s,
and a backoff (base 1 s, ×2, cap 20 s, 12 attempts) under which an event
survives a 30 s downstream outage.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import click
import msgspec
from msgspec import Struct
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from scripts.chaos_driver import ChaosDriver, CourierRetry, DriverResult
from scripts.chaos_report import (
    Collected,
    DeadLetterDoc,
    DeliveryRecord,
    FaultKind,
    FaultRecord,
    ProcessedDoc,
    QueueState,
    Report,
    ShipmentDoc,
    check_invariants,
    compute_recovery,
    iso,
    load_summary,
    render_markdown,
    timeline,
)
from scripts.mock_downstream import Delivery, MockDownstreamClient
from scripts.services import ServiceError, free_port, wait_for_port
from scripts.stack import Stack, StackOptions
from scripts.tcp_proxy import OutageMode
from shared.queue import deserialize
from shared.signing import generate_secret
from shared.storage.dead_letters import DeadLetterFilter, DeadLetters
from shared.storage.events import ProcessedEvents
from shared.storage.mongo import (
    PROCESSED_EVENTS,
    SHIPMENTS,
    Document,
    open_mongo,
)

__all__ = ["CHAOS_ENV", "ChaosOptions", "PlannedFault", "chaos_command", "plan_faults", "run_chaos"]

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


class _Run:
    """One chaos run against a started :class:`Stack` (async part)."""

    def __init__(
        self, options: ChaosOptions, stack: Stack, secret: str, say: Callable[[str], None]
    ) -> None:
        self.options = options
        self.stack = stack
        self.secret = secret
        self.say = say
        self.samples: list[tuple[float, int | None]] = []
        self.snapshots: list[list[Delivery]] = []
        self.unexpected_exits: list[str] = []
        self._busy: set[str] = set()
        """Children the fault being injected is handling; the supervisor leaves them alone."""
        self.origin = 0.0

    async def run(self) -> Collected:
        stack = self.stack
        mongo = open_mongo(stack.mongo_direct_url, timeout_s=10, app_name="gateway-chaos")
        self.db: AsyncDatabase[Document] = mongo[self.options.mongo_db]
        self.redis = Redis.from_url(stack.redis_url, socket_timeout=2, socket_connect_timeout=1)
        assert stack.mock_url is not None
        self.mock = MockDownstreamClient(stack.mock_url)
        try:
            return await self._run()
        finally:
            await self.mock.aclose()
            await self.redis.aclose()
            await mongo.close()

    async def _run(self) -> Collected:
        options = self.options
        driver = ChaosDriver(
            api_url=self.stack.api_url,
            source=SOURCE,
            secret=self.secret,
            rate=options.rate,
            seed=options.seed,
            retry=CourierRetry(give_up_s=options.give_up_s),
        )
        stop = asyncio.Event()
        background = [
            asyncio.create_task(self._sample()),
            asyncio.create_task(self._supervise()),
        ]
        self.origin = time.time()
        drive = asyncio.create_task(driver.run(stop))
        progress = asyncio.create_task(self._progress(driver))
        faults = await self._inject(plan_faults(options))
        await asyncio.sleep(max(0.0, self.origin + options.duration_s - time.time()))
        stop.set()
        self.say(f"{self._t()} load stopped; waiting for the couriers' last retries")
        result = await drive
        progress.cancel()
        accepted = sum(1 for e in result.events if e.accepted)
        self.say(f"{self._t()} {accepted} events accepted; draining the queue")
        drained, drain_s = await self._drain(result)
        self.samples.append((time.time(), await self._depth()))
        self.say(f"{self._t()} {'drained' if drained else 'NOT drained'} after {drain_s:.1f} s")
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        return await self._collect(result, faults, drained, drain_s)

    def _t(self) -> str:
        return f"[{time.time() - self.origin:6.1f} s]"

    # ---- background ------------------------------------------------------------------------

    async def _depth(self) -> int | None:
        try:
            return int(await self.redis.zcard(QUEUE))
        except (RedisError, OSError):
            return None

    async def _sample(self) -> None:
        while True:
            self.samples.append((time.time(), await self._depth()))
            await asyncio.sleep(1.0)

    async def _supervise(self) -> None:
        """Restart a child that died unless a fault is handling it, and note it as unexpected."""
        while True:
            await asyncio.sleep(1.0)
            for child in self.stack.check_children():
                if child.name in self._busy:
                    continue
                code = child.process.returncode if child.process else None
                self.unexpected_exits.append(f"{child.name} exited {code} at {self._t()}")
                self.say(f"{self._t()} UNEXPECTED: {child.name} exited {code}; restarting")
                if child in self.stack.workers:
                    index = self.stack.workers.index(child)
                    await asyncio.to_thread(self.stack.restart_worker, index)
                else:
                    await asyncio.to_thread(child.start)

    async def _progress(self, driver: ChaosDriver) -> None:
        while True:
            await asyncio.sleep(10)
            events = driver.events
            acked = sum(1 for e in events if e.accepted)
            refused = sum(1 for e in events for a in e.answers if a.status == 503)
            depth = self.samples[-1][1] if self.samples else None
            self.say(
                f"{self._t()} sent {len(events)}, accepted {acked}, 503 answers {refused}, "
                f"queue depth {depth}"
            )

    # ---- faults ----------------------------------------------------------------------------

    async def _inject(self, plan: list[PlannedFault]) -> list[FaultRecord]:
        records: list[FaultRecord] = []
        for planned in plan:
            await asyncio.sleep(max(0.0, self.origin + planned.at_s - time.time()))
            self.say(f"{self._t()} fault: {planned.kind.value} begins")
            inject = {
                FaultKind.WORKER_KILL: self._worker_kill,
                FaultKind.WORKER_TERM: self._worker_term,
                FaultKind.REDIS_RESTART: self._redis_restart,
                FaultKind.REDIS_CRASH: self._redis_restart,
                FaultKind.MONGO_OUTAGE: self._mongo_outage,
                FaultKind.DOWNSTREAM_OUTAGE: self._downstream_outage,
            }[planned.kind]
            record = await inject(planned)
            self.say(
                f"{self._t()} fault: {planned.kind.value} ended "
                f"({record.ended_at - record.started_at:.1f} s) {_brief(record.details)}"
            )
            records.append(record)
        return records

    def _worker_id(self, index: int) -> str:
        # As scripts/stack.py names them.
        return f"{os.uname().nodename}-w{index + 1}"

    async def _leases_of(self, worker_id: str) -> list[str]:
        cursor = self.db[PROCESSED_EVENTS].find(
            {"status": "processing", "lease_owner": worker_id}, {"_id": True}
        )
        return [str(doc["_id"]) async for doc in cursor]

    async def _wait_for_leases(self, worker_id: str, timeout_s: float = 10.0) -> int:
        """Wait until the worker holds a lease (a job mid-flight); how many it holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            held = await self._leases_of(worker_id)
            if held or time.monotonic() > deadline:
                return len(held)
            await asyncio.sleep(0.05)

    async def _restart_worker(self, index: int) -> float:
        await asyncio.sleep(RESTART_DELAY_S)
        worker = await asyncio.to_thread(self.stack.restart_worker, index)
        port = self.stack.worker_metrics_ports[index]
        await asyncio.to_thread(wait_for_port, port, timeout_s=30)
        assert worker.alive()
        return time.time()

    async def _worker_kill(self, planned: PlannedFault) -> FaultRecord:
        index = planned.target or 0
        worker = self.stack.workers[index]
        worker_id = self._worker_id(index)
        self._busy.add(worker.name)
        try:
            await self._wait_for_leases(worker_id)
            started = time.time()
            worker.signal(signal.SIGKILL)
            await asyncio.to_thread(worker.wait, 10)
            # Frozen now: the dead worker's claims that no run will end.
            held = await self._leases_of(worker_id)
            ended = await self._restart_worker(index)
        finally:
            self._busy.discard(worker.name)
        return FaultRecord(
            kind=planned.kind,
            target=worker.name,
            planned_at_s=planned.at_s,
            started_at=started,
            ended_at=ended,
            details={"in_flight_jobs": len(held), "in_flight": held},
            recovery={"worker_back_s": round(ended - started, 2)},
        )

    async def _worker_term(self, planned: PlannedFault) -> FaultRecord:
        index = planned.target or 0
        worker = self.stack.workers[index]
        worker_id = self._worker_id(index)
        self._busy.add(worker.name)
        try:
            await self._wait_for_leases(worker_id)
            held = await self._leases_of(worker_id)
            started = time.time()
            worker.signal(signal.SIGTERM)
            code = await asyncio.to_thread(worker.wait, SHUTDOWN_GRACE_S + 10)
            exited = time.time()
            ended = await self._restart_worker(index)
        finally:
            self._busy.discard(worker.name)
        return FaultRecord(
            kind=planned.kind,
            target=worker.name,
            planned_at_s=planned.at_s,
            started_at=started,
            ended_at=ended,
            details={
                "in_flight_jobs": len(held),
                "in_flight": held,
                "exit_code": code,
                "exit_s": round(exited - started, 2),
            },
            recovery={"worker_back_s": round(ended - started, 2)},
        )

    async def _redis_restart(self, planned: PlannedFault) -> FaultRecord:
        redis = self.stack.redis
        assert redis is not None
        before = await self._depth()
        started = time.time()
        if planned.kind is FaultKind.REDIS_CRASH:
            await asyncio.to_thread(redis.kill)
        else:
            await asyncio.to_thread(redis.stop)
        await asyncio.sleep(self.options.redis_down_s)
        await asyncio.to_thread(redis.start)
        ended = time.time()
        after = None
        for _ in range(50):
            if (after := await self._depth()) is not None:
                break
            await asyncio.sleep(0.1)
        how = "SIGKILL" if planned.kind is FaultKind.REDIS_CRASH else "SIGTERM"
        return FaultRecord(
            kind=planned.kind,
            target="redis",
            planned_at_s=planned.at_s,
            started_at=started,
            ended_at=ended,
            details={"stop": how, "queue_depth_before": before, "queue_depth_after": after},
        )

    async def _mongo_outage(self, planned: PlannedFault) -> FaultRecord:
        proxy = self.stack.mongo_proxy
        assert proxy is not None
        mode = self.options.mongo_outage_mode
        started = time.time()
        await asyncio.to_thread(proxy.go_down, mode)
        await asyncio.sleep(planned.duration_s)
        await asyncio.to_thread(proxy.go_up)
        return FaultRecord(
            kind=planned.kind,
            target="mongodb",
            planned_at_s=planned.at_s,
            started_at=started,
            ended_at=time.time(),
            details={"mode": mode.value},
        )

    async def _downstream_outage(self, planned: PlannedFault) -> FaultRecord:
        mock = self.stack.mock
        port = self.stack.mock_port
        assert mock is not None
        assert port is not None
        self._busy.add(mock.name)
        try:
            started = time.time()
            # Everything from now on answers 503; once the 2xx answers already
            # chosen have gone out, the record is complete: keep it, then stop
            # the process (its memory goes with it) and refuse connections.
            await self.mock.control(transient_rate=1.0)
            await asyncio.sleep(self.options.downstream_latency_ms / 1000 + 0.5)
            self.snapshots.append((await self.mock.deliveries()).deliveries)
            await asyncio.to_thread(mock.stop, 10)
            refused_at = time.time()
            await asyncio.sleep(max(0.0, started + planned.duration_s - time.time()))
            await asyncio.to_thread(mock.start)
            await asyncio.to_thread(wait_for_port, port, timeout_s=30)
        finally:
            self._busy.discard(mock.name)
        return FaultRecord(
            kind=planned.kind,
            target="downstream",
            planned_at_s=planned.at_s,
            started_at=started,
            ended_at=time.time(),
            details={
                "answering_503_s": round(refused_at - started, 2),
                "refusing_s": round(time.time() - refused_at, 2),
            },
        )

    # ---- after the load --------------------------------------------------------------------

    async def _drain(self, result: DriverResult) -> tuple[bool, float]:
        """Wait until the queue stays empty; (drained, seconds after the load stopped).

        arq keeps a job in the queue's sorted set until it finishes, so an empty
        queue means no job is waiting, deferred or running: nothing can change
        any more. Done when that holds and every accepted key is terminal, or
        when it has held for three checks in a row (the invariants then say
        which keys are not terminal).
        """
        started = time.monotonic()
        accepted = sum(1 for e in result.events if e.accepted)
        collection = self.db[PROCESSED_EVENTS]
        empty = 0
        while True:
            elapsed = time.monotonic() - started
            if await self._depth() == 0:
                empty += 1
                try:
                    done = await collection.count_documents(
                        {"status": {"$in": ["succeeded", "dead_lettered"]}}
                    )
                except PyMongoError:
                    # A raw PyMongo call: its errors are PyMongo's, not shared.storage's.
                    done = 0
                if done >= accepted or empty >= 3:
                    return True, elapsed
            else:
                empty = 0
            if elapsed > self.options.drain_timeout_s:
                return False, elapsed
            await asyncio.sleep(1.0)

    async def _collect(
        self, result: DriverResult, faults: list[FaultRecord], drained: bool, drain_s: float
    ) -> Collected:
        return Collected(
            driver=result,
            faults=faults,
            processed=await self._processed(),
            shipments=await self._shipments(),
            dead_letters=await self._dead_letters(),
            deliveries=await self._deliveries(),
            queue=await self._queue_state(),
            drained=drained,
            drain_s=drain_s,
            samples=self.samples,
            unexpected_exits=self.unexpected_exits,
            job_timeout_s=self.options.job_timeout_s,
        )

    async def _processed(self) -> dict[str, ProcessedDoc]:
        found: dict[str, ProcessedDoc] = {}
        async for doc in ProcessedEvents(self.db).scan():
            found[doc.key] = ProcessedDoc(
                status=doc.status.value,
                attempts=doc.attempts,
                completed_at=None if doc.completed_at is None else doc.completed_at.timestamp(),
                attempt_log=tuple((a.at.timestamp(), a.code) for a in doc.attempt_log),
            )
        return found

    async def _shipments(self) -> dict[str, ShipmentDoc]:
        found: dict[str, ShipmentDoc] = {}
        projection = {"shipment_id": 1, "status": 1, "last_event_id": 1, "history": 1}
        async for doc in self.db[SHIPMENTS].find({}, projection):
            found[str(doc["shipment_id"])] = ShipmentDoc(
                status=str(doc["status"]),
                last_event_id=str(doc["last_event_id"]),
                history=tuple(
                    (str(h["event_id"]), str(h["status"]), h["occurred_at"].timestamp())
                    for h in doc.get("history", ())
                ),
            )
        return found

    async def _dead_letters(self) -> dict[str, DeadLetterDoc]:
        found: dict[str, DeadLetterDoc] = {}
        async for letter in DeadLetters(self.db).iterate(DeadLetterFilter()):
            found[letter.key] = DeadLetterDoc(
                reason=letter.reason,
                code=letter.error.code,
                attempts=tuple((a.at.timestamp(), a.code) for a in letter.attempts),
            )
        return found

    async def _deliveries(self) -> list[DeliveryRecord]:
        final = (await self.mock.deliveries()).deliveries
        return [
            DeliveryRecord(key=d.webhook_id or "", status=d.status, received_at=d.received_at)
            for batch in [*self.snapshots, final]
            for d in batch
        ]

    async def _queue_state(self) -> QueueState:
        depth = int(await self.redis.zcard(QUEUE))
        jobs = [k async for k in self.redis.scan_iter(match="arq:job:*", count=1000)]
        in_progress = [k async for k in self.redis.scan_iter(match="arq:in-progress:*", count=1000)]
        failures: dict[str, str] = {}
        results = [k async for k in self.redis.scan_iter(match="arq:result:*", count=1000)]
        for start in range(0, len(results), 500):
            chunk = results[start : start + 500]
            for key, raw in zip(chunk, await self.redis.mget(chunk), strict=True):
                if raw is None:
                    continue
                stored = deserialize(raw)
                if not stored.get("s", True):
                    name = key.decode().removeprefix("arq:result:")
                    failures[name] = str(stored.get("r"))[:200]
        return QueueState(
            depth=depth, jobs_left=len(jobs), in_progress=len(in_progress), arq_failures=failures
        )


_FAILURE_EVENTS: Final = frozenset({"job.retrying", "job.cancelled", "job.lease_lost"})


def job_failures(logs: list[Path]) -> dict[str, list[tuple[float, str]]]:
    """key → (time, code) of every failed or cancelled run in the workers' JSON logs."""
    found: dict[str, list[tuple[float, str]]] = {}
    for path in logs:
        for line in path.read_bytes().splitlines():
            try:
                entry = msgspec.json.decode(line)
            except msgspec.DecodeError:
                continue
            if not isinstance(entry, dict) or entry.get("event") not in _FAILURE_EVENTS:
                continue
            key, stamp = entry.get("idempotency_key"), entry.get("timestamp")
            if not isinstance(key, str) or not isinstance(stamp, str):
                continue
            at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            found.setdefault(key, []).append((at, str(entry.get("code") or entry["event"])))
    return found


def _brief(details: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in details.items() if k != "in_flight")


def _environment(stack: Stack) -> dict[str, str]:
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    store = (
        "mongoeco (embedded, in-memory MongoDB-wire emulation)"
        if stack.mongo_is_embedded
        else "MongoDB (--mongo-url)"
    )
    return {
        "machine": f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis": next((w for w in redis_version if w.startswith("v=")), "?").removeprefix("v="),
        "store": store,
    }


def run_chaos(options: ChaosOptions, say: Callable[[str], None] = click.echo) -> Report:
    """Run the whole chaos experiment and write its report; the report."""
    plan = plan_faults(options)  # fail on a bad schedule before starting anything
    secret = generate_secret()
    env = options.settings_env
    env["GATEWAY_SOURCES"] = json.dumps({SOURCE: {"secrets": [secret]}})
    env["GATEWAY_SOURCES_FILE"] = ""
    output = options.output
    output.mkdir(parents=True, exist_ok=True)
    redis_args = ("--appendfsync", "always") if options.redis_crash else ()
    stack = Stack(
        StackOptions(
            port=options.port or free_port(),
            workers=options.workers,
            mongo_url=options.mongo_url,
            mongo_db=options.mongo_db,
            redis_appendonly=True,
            redis_args=redis_args,
            mongo_proxy=True,
            mock_downstream=True,
            mock_args=["--latency-ms", f"{options.downstream_latency_ms:g}"],
            env=env,
            log_dir=output / "logs",
            shutdown_grace_s=SHUTDOWN_GRACE_S,
        )
    )
    started = time.time()
    say(f"starting the stack (logs in {output / 'logs'})")
    stack.start()
    try:
        say(
            f"stack ready: {options.workers} workers, Redis AOF "
            f"(appendfsync {'always' if options.redis_crash else 'everysec'}), MongoDB behind a "
            f"proxy; {len(plan)} faults planned: "
            + ", ".join(f"{p.kind.value}@{p.at_s:g}s" for p in plan)
        )
        run = _Run(options, stack, secret, say)
        collected = asyncio.run(run.run())
        environment = _environment(stack)
    finally:
        say("stopping the stack")
        stack.stop()
    collected.job_failures = job_failures(sorted((output / "logs").glob("worker-*.log")))
    compute_recovery(collected)
    invariants = check_invariants(collected)
    config: dict[str, Any] = {
        **{
            k: (str(v) if isinstance(v, Path | OutageMode) else v)
            for k, v in asdict(options).items()
        },
        "redis_appendfsync": "always" if options.redis_crash else "everysec",
        "shutdown_grace_s": SHUTDOWN_GRACE_S,
        "supervisor_restart_delay_s": RESTART_DELAY_S,
        **{k.removeprefix("GATEWAY_").lower(): v for k, v in options.settings_env.items()},
        "load_started_at": run.origin,
    }
    config.pop("output", None)
    config.pop("gateway_env", None)
    report = Report(
        passed=all(inv.passed for inv in invariants),
        started=iso(started),
        command="gateway chaos " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        config=config,
        environment=environment,
        load=load_summary(collected.driver),
        faults=collected.faults,
        invariants=invariants,
        drain_s=round(collected.drain_s, 1),
        drained=collected.drained,
        timeline=timeline(collected),
    )
    (output / "report.json").write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    (output / "report.md").write_text(render_markdown(report))
    return report


@click.command("chaos")
@click.option(
    "--duration",
    type=click.FloatRange(10),
    default=180.0,
    show_default=True,
    help="Seconds of load.",
)
@click.option(
    "--rate", type=click.FloatRange(1), default=25.0, show_default=True, help="Events per second."
)
@click.option("--workers", type=click.IntRange(2, 16), default=2, show_default=True)
@click.option(
    "--seed", type=int, default=1, show_default=True, help="Seed of the schedule and the load."
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/chaos"),
    show_default=True,
)
@click.option(
    "--outage",
    type=click.FloatRange(1),
    default=30.0,
    show_default=True,
    help="Seconds of each MongoDB and downstream outage.",
)
@click.option(
    "--redis-down",
    type=click.FloatRange(0),
    default=3.0,
    show_default=True,
    help="Seconds Redis stays down when restarted.",
)
@click.option("--drain-timeout", type=click.FloatRange(1), default=300.0, show_default=True)
@click.option(
    "--mongo-outage-mode",
    type=click.Choice([m.value for m in OutageMode]),
    default=OutageMode.DROP.value,
    show_default=True,
    help="drop: connections reset and refused; blackhole: connections hang.",
)
@click.option(
    "--redis-crash", is_flag=True, help="Also SIGKILL Redis (runs it with appendfsync always)."
)
@click.option("--mongo-url", help="A MongoDB to use instead of the embedded one (single host).")
@click.option("--mongo-db", help="Database name (default: a fresh chaos_<hex>).")
@click.option("--port", type=int, help="API port (default: a free one).")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="GATEWAY_NAME=VALUE",
    help="Override a gateway setting of the run (repeatable).",
)
@click.option("--downstream-latency-ms", type=click.FloatRange(0), default=100.0, show_default=True)
def chaos_command(
    duration: float,
    rate: float,
    workers: int,
    seed: int,
    output: Path,
    outage: float,
    redis_down: float,
    drain_timeout: float,
    mongo_outage_mode: str,
    redis_crash: bool,
    mongo_url: str | None,
    mongo_db: str | None,
    port: int | None,
    downstream_latency_ms: float,
    settings: tuple[str, ...],
) -> None:
    """Run the gateway under load, inject faults, and check that nothing accepted is lost."""
    gateway_env: dict[str, str] = {}
    for setting in settings:
        name, equals, value = setting.partition("=")
        if not equals or not name.startswith("GATEWAY_"):
            raise click.BadParameter(f"{setting!r} is not GATEWAY_NAME=VALUE", param_hint="--set")
        gateway_env[name] = value
    options = ChaosOptions(
        gateway_env=gateway_env,
        duration_s=duration,
        rate=rate,
        workers=workers,
        seed=seed,
        output=output,
        outage_s=outage,
        redis_down_s=redis_down,
        drain_timeout_s=drain_timeout,
        mongo_outage_mode=OutageMode(mongo_outage_mode),
        redis_crash=redis_crash,
        mongo_url=mongo_url,
        port=port,
        downstream_latency_ms=downstream_latency_ms,
        mongo_db=mongo_db or f"chaos_{uuid.uuid4().hex[:8]}",
    )
    try:
        plan_faults(options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--duration") from exc
    try:
        report = run_chaos(options)
    except ServiceError as exc:
        raise click.ClickException(f"the stack did not start: {exc}") from exc
    for inv in report.invariants:
        click.echo(f"{'PASS' if inv.passed else 'FAIL'} {inv.name}: {inv.summary}")
    for fault in report.faults:
        recovery = ", ".join(
            f"{k} {'—' if v is None else f'{v:g} s'}" for k, v in fault.recovery.items()
        )
        click.echo(f"fault {fault.kind.value} ({fault.target}): {recovery}")
    click.echo(f"{'PASS' if report.passed else 'FAIL'} — report in {output / 'report.md'}")
    if not report.passed:
        sys.exit(1)


if __name__ == "__main__":
    chaos_command()
