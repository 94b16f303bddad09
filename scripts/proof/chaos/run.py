"""``gateway chaos``: load plus injected faults, then the invariants of docs/contract.md §6.

One command (``docs/reliability.md`` has the fault model and a real report):

1. starts the whole gateway here (``scripts/devstack/stack.py``): Redis with an AOF on
   disk, MongoDB (embedded, or ``--mongo-url``) behind a TCP proxy the
   harness can cut, ``gateway init-db``, the API, ``--workers`` workers and
   the mock downstream (signature checking on, ``--downstream-latency-ms``
   per delivery so jobs are in flight when a worker is killed);
2. drives it with :class:`~scripts.proof.chaos.driver.ChaosDriver` at ``--rate``
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
   (:mod:`scripts.proof.chaos.report`), writes ``report.md`` and ``report.json``
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
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import msgspec
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis
from redis.exceptions import RedisError

from scripts.devstack.stack import Stack, proof_stack
from scripts.harness.mock_downstream import Delivery, MockDownstreamClient
from scripts.harness.services import wait_for_port
from scripts.harness.tcp_proxy import OutageMode
from scripts.proof.chaos.collect import Collector, job_failures
from scripts.proof.chaos.driver import ChaosDriver, CourierRetry, DriverResult
from scripts.proof.chaos.invariants import check_invariants, compute_recovery
from scripts.proof.chaos.plan import (
    QUEUE,
    RESTART_DELAY_S,
    SHUTDOWN_GRACE_S,
    SOURCE,
    ChaosOptions,
    PlannedFault,
    plan_faults,
)
from scripts.proof.chaos.report import (
    Collected,
    FaultKind,
    FaultRecord,
    Report,
    iso,
    load_summary,
    render_markdown,
    timeline,
)
from scripts.traffic.carriers import CANONICAL_SOURCE, traffic_sources
from scripts.traffic.observe import Observer
from shared.queue import client_for, close_client
from shared.settings import Settings, SourceConfig, load_settings
from shared.storage.mongo import (
    PROCESSED_EVENTS,
    Document,
    open_mongo,
)

__all__ = ["run_chaos"]


class _Run:
    """One chaos run against a started :class:`Stack` (async part)."""

    def __init__(
        self,
        options: ChaosOptions,
        stack: Stack,
        sources: Mapping[str, SourceConfig],
        say: Callable[[str], None],
    ) -> None:
        self.options = options
        self.stack = stack
        self.sources = sources
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
        self.redis: Redis = (
            Redis.from_url(stack.redis_url, socket_timeout=2, socket_connect_timeout=1)
            if stack.sentinel is None
            else client_for(
                Settings(
                    redis_url=stack.redis_url,
                    redis_sentinels=stack.sentinel.sentinels_env,
                    queue_name=QUEUE,
                ),
                timeout_s=2,
            )
        )
        assert stack.mock_url is not None
        self.mock = MockDownstreamClient(stack.mock_url)
        try:
            return await self._run()
        finally:
            await self.mock.aclose()
            await close_client(self.redis)
            await mongo.close()

    async def _run(self) -> Collected:
        options = self.options
        driver = ChaosDriver(
            api_url=self.stack.api_url,
            sources=self.sources,
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
                FaultKind.REDIS_PRIMARY_KILL: self._redis_primary_kill,
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
        # As scripts/devstack/stack.py names them.
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
        return await self._stop_worker(planned, signal.SIGKILL)

    async def _worker_term(self, planned: PlannedFault) -> FaultRecord:
        return await self._stop_worker(planned, signal.SIGTERM)

    async def _stop_worker(self, planned: PlannedFault, signum: signal.Signals) -> FaultRecord:
        """SIGKILL or SIGTERM a worker while it holds leases; restart it as a supervisor would."""
        index = planned.target or 0
        worker = self.stack.workers[index]
        worker_id = self._worker_id(index)
        killed = signum is signal.SIGKILL
        self._busy.add(worker.name)
        try:
            await self._wait_for_leases(worker_id)
            held = [] if killed else await self._leases_of(worker_id)
            started = time.time()
            worker.signal(signum)
            code = await asyncio.to_thread(worker.wait, 10 if killed else SHUTDOWN_GRACE_S + 10)
            exited = time.time()
            if killed:
                # Frozen now: the dead worker's claims that no run will end.
                held = await self._leases_of(worker_id)
            ended = await self._restart_worker(index)
        finally:
            self._busy.discard(worker.name)
        details: dict[str, Any] = {"in_flight_jobs": len(held), "in_flight": held}
        if not killed:
            details |= {"exit_code": code, "exit_s": round(exited - started, 2)}
        return _happened(
            planned,
            worker.name,
            started,
            ended,
            details=details,
            recovery={"worker_back_s": round(ended - started, 2)},
        )

    async def _redis_restart(self, planned: PlannedFault) -> FaultRecord:
        topology = self.stack.sentinel
        redis = self.stack.redis if topology is None else topology.primary()
        assert redis is not None
        before = await self._depth()
        started = time.time()
        if planned.kind is FaultKind.REDIS_CRASH:
            await asyncio.to_thread(redis.kill)
        else:
            await asyncio.to_thread(redis.stop)
        await asyncio.sleep(self.options.redis_down_s)
        if topology is None:
            await asyncio.to_thread(redis.start)
        else:
            # Down longer than down-after-milliseconds: Sentinel promoted the replica.
            await asyncio.to_thread(topology.wait_for_failover, redis.port)
            await asyncio.to_thread(topology.rejoin, redis)
        ended = time.time()
        after = None
        for _ in range(50):
            if (after := await self._depth()) is not None:
                break
            await asyncio.sleep(0.1)
        how = "SIGKILL" if planned.kind is FaultKind.REDIS_CRASH else "SIGTERM"
        return _happened(
            planned,
            "redis",
            started,
            ended,
            details={"stop": how, "queue_depth_before": before, "queue_depth_after": after},
        )

    async def _redis_primary_kill(self, planned: PlannedFault) -> FaultRecord:
        """SIGKILL the primary under load; Sentinel promotes the replica; the killed
        server comes back ``--redis-down`` seconds later as the new primary's replica."""
        topology = self.stack.sentinel
        assert topology is not None
        before = await self._depth()
        started = time.time()
        killed = await asyncio.to_thread(topology.kill_primary)
        await asyncio.to_thread(topology.wait_for_failover, killed.port)
        promoted = time.time()
        await asyncio.sleep(max(0.0, started + self.options.redis_down_s - time.time()))
        await asyncio.to_thread(topology.rejoin, killed)
        ended = time.time()
        return _happened(
            planned,
            f"redis primary :{killed.port}",
            started,
            ended,
            details={
                "stop": "SIGKILL",
                "promoted_after_s": round(promoted - started, 2),
                "new_primary_port": topology.primary().port,
                "queue_depth_before": before,
                "queue_depth_after": await self._depth(),
            },
        )

    async def _mongo_outage(self, planned: PlannedFault) -> FaultRecord:
        proxy = self.stack.mongo_proxy
        assert proxy is not None
        mode = self.options.mongo_outage_mode
        started = time.time()
        await asyncio.to_thread(proxy.go_down, mode)
        await asyncio.sleep(planned.duration_s)
        await asyncio.to_thread(proxy.go_up)
        return _happened(
            planned,
            "mongodb",
            started,
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
        return _happened(
            planned,
            "downstream",
            started,
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
        observer = Observer(self.db, self.redis, QUEUE)
        drain = await observer.drain(
            [e.key for e in result.events if e.accepted],
            timeout_s=self.options.drain_timeout_s,
            settle_checks=3,
            poll_s=1.0,
        )
        return drain.drained, drain.seconds

    async def _collect(
        self, result: DriverResult, faults: list[FaultRecord], drained: bool, drain_s: float
    ) -> Collected:
        collector = Collector(self.db, self.redis, self.mock, self.snapshots)
        return Collected(
            driver=result,
            faults=faults,
            processed=await collector.processed(),
            shipments=await collector.shipments(),
            dead_letters=await collector.dead_letters(),
            deliveries=await collector.deliveries(),
            queue=await collector.queue_state(),
            drained=drained,
            drain_s=drain_s,
            samples=self.samples,
            unexpected_exits=self.unexpected_exits,
            job_timeout_s=self.options.job_timeout_s,
        )


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


def _happened(
    planned: PlannedFault,
    target: str,
    started: float,
    ended: float | None = None,
    *,
    details: dict[str, Any],
    recovery: dict[str, float | None] | None = None,
) -> FaultRecord:
    """The record of ``planned`` as it happened to ``target`` from ``started`` to ``ended``
    (now when not given)."""
    return FaultRecord(
        kind=planned.kind,
        target=target,
        planned_at_s=planned.at_s,
        started_at=started,
        ended_at=time.time() if ended is None else ended,
        details=details,
        recovery=recovery or {},
    )


def run_chaos(options: ChaosOptions, say: Callable[[str], None] = click.echo) -> Report:
    """Run the whole chaos experiment and write its report; the report."""
    plan = plan_faults(options)  # fail on a bad schedule before starting anything
    # The adapter mix (docs/carriers.md): the canonical source, then one per carrier.
    generated = traffic_sources()
    raw_sources = {SOURCE: generated.pop(CANONICAL_SOURCE), **generated}
    sources = load_settings({"GATEWAY_SOURCES": json.dumps(raw_sources)}).sources
    env = options.settings_env
    env["GATEWAY_SOURCES"] = json.dumps(raw_sources)
    env["GATEWAY_SOURCES_FILE"] = ""
    output = options.output
    output.mkdir(parents=True, exist_ok=True)
    redis_args = ("--appendfsync", "always") if options.redis_crash else ()
    stack = proof_stack(
        options,
        redis_appendonly=True,
        redis_args=redis_args,
        redis_topology="sentinel" if options.redis_topology == "sentinel" else "single",
        mongo_proxy=True,
        mock_args=["--latency-ms", f"{options.downstream_latency_ms:g}"],
        env=env,
        shutdown_grace_s=SHUTDOWN_GRACE_S,
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
        run = _Run(options, stack, sources, say)
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
        "redis_topology": options.redis_topology,
        "shutdown_grace_s": SHUTDOWN_GRACE_S,
        "supervisor_restart_delay_s": RESTART_DELAY_S,
        **{k.removeprefix("GATEWAY_").lower(): v for k, v in options.settings_env.items()},
        # After the --set values, which are strings: the number the run used.
        "ack_replicas": int(
            env.get("GATEWAY_ACK_REPLICAS") or os.environ.get("GATEWAY_ACK_REPLICAS") or 0
        ),
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
