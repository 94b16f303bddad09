"""``gateway bench-worker``: worker CPU per event, events/s, and arq's own floor.

The targets are those of docs/contract.md §6 (≤ 1.0 ms of worker CPU per
event with one worker, ≤ 3 MongoDB round trips per event).

Each round runs on a fresh queue and a fresh database (the embedded
MongoDB-wire server is restarted; a given MongoDB gets a new database that is
dropped afterwards):

1. start N ``gateway worker`` processes and wait until each has written its
   health key (it is polling the queue);
2. enqueue ``--events`` events at once with :class:`shared.queue.Enqueuer`
   (shipment lifecycles with mixed event types, as the load test sends; no
   API in the way), in one pipeline;
3. time until the queue is empty, then check every event ``succeeded``.

It reports events/s per configuration and per worker process, the CPU the
workers (psutil: the processes' own user + system time), the store and Redis
used per event, the Redis commands the workers sent per event (Redis's
``INFO commandstats`` less what the benchmark itself sent), and MongoDB round
trips per event counted with PyMongo command monitoring on a sample of events
run in process through the worker's own
:class:`~gateway_worker.jobs.EventProcessor` (no worker code changed, no debug
flag). No downstream is configured: this measures the worker and its store,
not a receiver.

**The arq floor**: one more round drains the same events with one
:mod:`scripts.proof.bench.worker_floor` process — the worker's own settings
and run path with a job function that does nothing — so what the queue
machinery costs, and what our job adds above it, are numbers.

The store is named in the output: ``mongoeco`` (the embedded, in-memory
MongoDB-wire emulation, one Python process — started here unless
``--mongo-url`` is given) or ``MongoDB <version>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

import click
import msgspec
import redis
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from rich.console import Console

from gateway_worker.jobs import EventProcessor
from gateway_worker.metrics import WorkerMetrics
from scripts.harness.services import EmbeddedMongo, RedisServer, ServiceError
from scripts.proof.bench.worker_report import (
    BenchWorkerReport,
    RoundResult,
    RoundTrips,
    render_console,
    render_markdown,
)
from scripts.proof.options import Decorator, mongo_url_option, output_option
from scripts.proof.probes import (
    CommandCounter,
    Profile,
    ProfileRecorder,
    cpu_seconds,
    describe_store,
    find_py_spy,
)
from scripts.traffic.events import plan_lifecycle
from shared.contracts import QueuedEvent, decode_event
from shared.logging import configure_logging
from shared.queue import Enqueuer, open_queue_pool, serialize, worker_health_key
from shared.settings import Settings, redact_url
from shared.storage.indexes import ensure_indexes, index_specs
from shared.storage.mongo import Document, open_mongo

__all__ = [
    "BenchWorkerError",
    "BenchWorkerReport",
    "RoundResult",
    "RoundTrips",
    "bench_worker",
    "bench_worker_command",
    "make_events",
    "render_markdown",
]

SOURCE: Final = "bench"
QUEUE_NAME: Final = "gateway:bench-worker"
WORKER_MODULE: Final = "scripts.commands.cli worker"
FLOOR_MODULE: Final = "scripts.proof.bench.worker_floor"


class BenchWorkerError(Exception):
    """The benchmark could not produce a trustworthy number."""


@dataclass
class BenchWorkerOptions:
    """What to run."""

    events: int = 2000
    workers: tuple[int, ...] = (1, 2, 4)
    concurrency: int = 20
    mongo_url: str | None = None
    sample: int = 50
    output: Path = Path("bench-worker-report")
    seed: int = 1
    poll_delay_s: float | None = None
    """``GATEWAY_WORKER_POLL_DELAY_S`` of the workers (``None``: the product default)."""
    batch: int | None = None
    """``GATEWAY_WORKER_BATCH`` of the workers (``None``: the product default)."""
    profile_s: int = 0
    """Seconds of py-spy on the first configuration's first worker (0: none)."""

    @property
    def batch_size(self) -> int:
        return self.batch if self.batch is not None else Settings().worker_batch


def make_events(count: int, *, seed: int, prefix: str) -> list[QueuedEvent]:
    """``count`` queued events: whole shipment lifecycles (the last one cut short)."""
    rng = random.Random(seed)
    events: list[QueuedEvent] = []
    serial = 0
    now_ms = int(time.time() * 1000)
    start = datetime.now(UTC).replace(microsecond=0)
    while len(events) < count:
        serial += 1
        for planned in plan_lifecycle(rng, prefix, serial, start):
            body = planned.body()
            event = decode_event(body)
            events.append(
                QueuedEvent(
                    idempotency_key=f"{SOURCE}:{event.event_id}",
                    source=SOURCE,
                    event_id=event.event_id,
                    body=body,
                    request_id=f"req_{prefix}_{len(events)}",
                    received_at_ms=now_ms,
                )
            )
            if len(events) == count:
                break
    return events


async def count_round_trips(
    mongo_url: str, db_name: str, events: Sequence[QueuedEvent], *, batch: int
) -> RoundTrips:
    """Run ``events`` through the worker's processor in batches of ``batch``, as a worker
    runs them; MongoDB commands per event."""
    listener = CommandCounter()
    client = open_mongo(mongo_url, event_listeners=[listener])
    try:
        await ensure_indexes(client[db_name], index_specs(86_400))
        processor = EventProcessor(
            db=client[db_name],
            settings=Settings(mongo_url=mongo_url, mongo_db=db_name),
            worker_id="bench-round-trips",
            metrics=WorkerMetrics(),
            downstream=None,
        )
        per_batch: list[float] = []
        by_command: Counter[str] = Counter()
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            listener.commands.clear()
            results = await processor.process_batch(
                [(q.idempotency_key, 1, msgspec.msgpack.decode(serialize(q))) for q in chunk]
            )
            for queued, result in zip(chunk, results, strict=True):
                if result != "succeeded":
                    raise BenchWorkerError(
                        f"{queued.idempotency_key} ended {result!r}, not succeeded"
                    )
            per_batch.append(len(listener.commands) / len(chunk))
            by_command.update(listener.commands)
        await client.drop_database(db_name)
    finally:
        await client.close()
    return RoundTrips(
        sample=len(events),
        batch=batch,
        per_event=round(by_command.total() / len(events), 3) if events else 0.0,
        max_per_event=round(max(per_batch, default=0.0), 3),
        by_command=dict(by_command.most_common()),
    )


@dataclass
class _Round:
    """One configuration's processes and measurements."""

    options: BenchWorkerOptions
    workers: int
    redis_url: str
    mongo_url: str
    db_name: str
    log_dir: Path
    module: str = WORKER_MODULE
    """What each process runs (``python -m module``): the worker, or the arq floor."""
    batch: int = 1
    """The processes' ``GATEWAY_WORKER_BATCH``."""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def env(self, index: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(
            {
                "GATEWAY_REDIS_URL": self.redis_url,
                "GATEWAY_MONGO_URL": self.mongo_url,
                "GATEWAY_MONGO_DB": self.db_name,
                "GATEWAY_QUEUE_NAME": QUEUE_NAME,
                "GATEWAY_WORKER_ID": self.worker_id(index),
                "GATEWAY_WORKER_METRICS_PORT": "0",
                "GATEWAY_WORKER_CONCURRENCY": str(self.options.concurrency),
                "GATEWAY_WORKER_HEALTH_INTERVAL_S": "1",
                "GATEWAY_WORKER_BATCH": str(self.batch),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.options.poll_delay_s is not None:
            env["GATEWAY_WORKER_POLL_DELAY_S"] = f"{self.options.poll_delay_s:g}"
        return env

    @property
    def name(self) -> str:
        if self.module == FLOOR_MODULE:
            return "floor" if self.batch == 1 else f"floor-batch{self.batch}"
        return f"{self.workers}w"

    def worker_id(self, index: int) -> str:
        return f"bench-{self.name}-{index + 1}"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(self.workers):
            log = (self.log_dir / f"{self.name}-worker-{index + 1}.log").open("wb")
            self._logs.append(log)
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", *self.module.split()],
                    env=self.env(index),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def wait_ready(self, client: redis.Redis, timeout_s: float = 60) -> None:
        keys = [worker_health_key(QUEUE_NAME, self.worker_id(i)) for i in range(self.workers)]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            exited = [p.args for p in self.processes if p.poll() is not None]
            if exited:
                raise BenchWorkerError(f"a worker exited during start (logs: {self.log_dir})")
            if all(client.exists(key) for key in keys):
                return
            time.sleep(0.1)
        raise BenchWorkerError(f"workers not polling after {timeout_s} s (logs: {self.log_dir})")

    def cpu_s(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()


async def _prefill(redis_url: str, events: Sequence[QueuedEvent]) -> None:
    pool = await open_queue_pool(redis_url, QUEUE_NAME, retries=0)
    try:
        enqueuer = Enqueuer(pool, QUEUE_NAME)
        try:
            # Loaded first: otherwise every enqueue of the pipeline meets NOSCRIPT once.
            await enqueuer.load_script()
            stored = await asyncio.gather(*(enqueuer.enqueue(e.idempotency_key, e) for e in events))
        finally:
            await enqueuer.close()
        if not all(stored):
            raise BenchWorkerError("some events were already queued: the queue was not fresh")
    finally:
        await pool.aclose()


async def _ensure_indexes(mongo_url: str, db_name: str) -> None:
    client = open_mongo(mongo_url)
    try:
        await ensure_indexes(client[db_name], index_specs(86_400))
    finally:
        await client.close()


def _store_label(mongo_url: str, *, embedded: bool) -> str:
    try:
        return describe_store(mongo_url, embedded=embedded, unreachable_ok=False)
    except PyMongoError as exc:
        raise BenchWorkerError(f"cannot reach MongoDB at {redact_url(mongo_url)}: {exc}") from exc


@contextlib.contextmanager
def _store(options: BenchWorkerOptions, log_dir: Path) -> Iterator[tuple[str, int | None]]:
    """A MongoDB URL for one round, and the pid of its server when it runs here."""
    if options.mongo_url is not None:
        yield options.mongo_url, None
        return
    log = (log_dir / "mongo.log").open("ab")
    mongo = EmbeddedMongo(log=log)
    try:
        mongo.start()
        assert mongo.process is not None
        yield mongo.url, mongo.process.pid
    finally:
        mongo.stop()
        log.close()


class _Drain(NamedTuple):
    seconds: float
    worker_cpu_s: float
    store_cpu_s: float
    redis_cpu_s: float
    redis_commands: Counter[str]
    """Commands the workers sent (Redis's count less the benchmark's own)."""


def _drain(
    bench: _Round,
    client: redis.Redis,
    events: Sequence[QueuedEvent],
    pids: tuple[int | None, ...],
    profiler: ProfileRecorder | None = None,
) -> _Drain:
    """Enqueue ``events`` for the polling workers; measure until the queue is empty
    (with ``profiler`` recording from the moment they are queued)."""
    store_pid, redis_pid = pids
    cpu_before = (bench.cpu_s(), cpu_seconds(store_pid), cpu_seconds(redis_pid))
    calls_before = _command_calls(client)
    started = time.perf_counter()
    asyncio.run(_prefill(bench.redis_url, events))
    if profiler is not None:
        profiler.start(bench.options.profile_s)
    polls = 0
    while client.zcard(QUEUE_NAME):
        polls += 1
        if any(p.poll() is not None for p in bench.processes):
            raise BenchWorkerError(f"a worker died during the drain ({bench.log_dir})")
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    worker_cpu = bench.cpu_s() - cpu_before[0]
    store_cpu, redis_cpu = (cpu_seconds(pid) - cpu_before[i + 1] for i, pid in enumerate(pids))
    commands = _command_calls(client) - calls_before
    # The benchmark's own: one enqueue script per event (and the commands it
    # calls, counted too), its SCRIPT LOAD, the ZCARD polls, one INFO.
    ours = Counter({name: len(events) for name in ("evalsha", "exists", "psetex", "zadd")})
    ours.update({"zcard": polls + 1, "info": 1, "script|load": 1})
    return _Drain(seconds, worker_cpu, store_cpu, redis_cpu, commands - ours)


def _command_calls(client: redis.Redis) -> Counter[str]:
    stats: dict[str, dict[str, int]] = client.info("commandstats")  # type: ignore[assignment]
    return Counter({name.removeprefix("cmdstat_"): s["calls"] for name, s in stats.items()})


def _one_round(
    options: BenchWorkerOptions,
    workers: int,
    redis_server: RedisServer,
    workdir: Path,
    console: Console,
    *,
    module: str = WORKER_MODULE,
    batch: int,
    profile: bool = False,
) -> RoundResult:
    tag = uuid.uuid4().hex[:6]
    db_name = f"bench_worker_{tag}"
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    events = make_events(options.events, seed=options.seed, prefix=f"bw{tag}")
    floor = module == FLOOR_MODULE
    # The floor's job never touches MongoDB: no store to start.
    store = contextlib.nullcontext(("mongodb://unused", None)) if floor else None
    with store or _store(options, workdir) as (mongo_url, store_pid):
        if not floor:
            asyncio.run(_ensure_indexes(mongo_url, db_name))
        bench = _Round(
            options, workers, redis_server.url, mongo_url, db_name, workdir / "logs", module, batch
        )
        try:
            bench.start()
            bench.wait_ready(client)
            redis_pid = redis_server.process.pid if redis_server.process else None
            profiler = _profiler(options, bench, workdir) if profile else None
            drain = _drain(bench, client, events, (store_pid, redis_pid), profiler)
            profiled = _profiled(profiler, console)
            results = sum(1 for _ in client.scan_iter(match="arq:result:*", count=1000))
        finally:
            bench.stop()
            client.close()
        succeeded = results if floor else _succeeded(mongo_url, db_name)
    if succeeded != options.events:
        raise BenchWorkerError(f"{bench.name}: {succeeded}/{options.events} events succeeded")
    result = _result(workers, options.events, drain, store_measured=store_pid is not None)
    if profiled is not None:
        result = msgspec.structs.replace(result, profile=profiled)
    if floor:
        what = "arq floor (no-op job)" if batch == 1 else f"queue floor (batches of {batch}, no-op)"
    else:
        what = f"{workers} worker(s), batches of {batch}"
    console.log(
        f"{what}: {options.events} events in {result.drain_s} s → {result.events_per_s} "
        f"events/s, {result.worker_cpu_ms_per_event} ms worker CPU per event, "
        f"{result.redis_commands_per_event} Redis commands per event"
    )
    return result


def _profiler(options: BenchWorkerOptions, bench: _Round, workdir: Path) -> ProfileRecorder:
    py_spy = find_py_spy()
    if py_spy is None:
        raise BenchWorkerError("--profile needs py-spy (installed with the dev dependencies)")
    pid = bench.processes[0].pid
    return ProfileRecorder(py_spy, {f"worker-{bench.name}": pid}, options.output / "profile")


def _profiled(profiler: ProfileRecorder | None, console: Console) -> Profile | None:
    if profiler is None:
        return None
    profiles, errors = profiler.finish()
    for error in errors:
        console.log(f"[yellow]py-spy: {error}")
    return profiles[0] if profiles else None


def _succeeded(mongo_url: str, db_name: str) -> int:
    mongo: MongoClient[Document] = MongoClient(mongo_url, serverSelectionTimeoutMS=10_000)
    with mongo:
        succeeded = mongo[db_name]["processed_events"].count_documents({"status": "succeeded"})
        mongo.drop_database(db_name)
    return succeeded


def _result(workers: int, events: int, drain: _Drain, *, store_measured: bool) -> RoundResult:
    def per_event_ms(cpu_s: float) -> float:
        return round(1000 * cpu_s / events, 3)

    def pct(cpu_s: float) -> float:
        return round(100 * cpu_s / drain.seconds, 1)

    return RoundResult(
        workers=workers,
        events=events,
        drain_s=round(drain.seconds, 2),
        events_per_s=round(events / drain.seconds, 1),
        events_per_s_per_worker=round(events / drain.seconds / workers, 1),
        worker_cpu_ms_per_event=per_event_ms(drain.worker_cpu_s),
        worker_cpu_pct=pct(drain.worker_cpu_s),
        store_cpu_ms_per_event=per_event_ms(drain.store_cpu_s) if store_measured else None,
        store_cpu_pct=pct(drain.store_cpu_s) if store_measured else None,
        redis_cpu_pct=pct(drain.redis_cpu_s),
        redis_commands_per_event=round(drain.redis_commands.total() / events, 2),
        redis_commands={
            name: round(calls / events, 2) for name, calls in drain.redis_commands.most_common()
        },
    )


def bench_worker(options: BenchWorkerOptions, console: Console | None = None) -> BenchWorkerReport:
    """Run every configuration, the arq floor and the round-trip count; write the report."""
    console = console or Console(stderr=True)
    options.output.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-worker-") as tmp:
        workdir = Path(tmp)
        (workdir / "logs").mkdir()
        with _store(options, workdir) as (mongo_url, store_pid):
            store = _store_label(mongo_url, embedded=store_pid is not None)
            sample = make_events(options.sample, seed=options.seed + 1, prefix="rt")
            round_trips = asyncio.run(
                count_round_trips(
                    mongo_url,
                    f"bench_round_trips_{uuid.uuid4().hex[:6]}",
                    sample,
                    batch=options.batch_size,
                )
            )
        console.log(
            f"store: {store}; MongoDB round trips per event: {round_trips.per_event} "
            f"({round_trips.by_command})"
        )
        redis_server = RedisServer(workdir / "redis")
        try:
            redis_server.start()
        except ServiceError as exc:
            raise BenchWorkerError(str(exc)) from exc
        try:
            batch = options.batch_size

            def floor_round(size: int) -> RoundResult:
                return _one_round(
                    options, 1, redis_server, workdir, console, module=FLOOR_MODULE, batch=size
                )

            floor = floor_round(1)
            queue_floor = floor_round(batch) if batch > 1 else floor
            rounds = [
                _one_round(
                    options,
                    n,
                    redis_server,
                    workdir,
                    console,
                    batch=batch,
                    profile=options.profile_s > 0 and i == 0,
                )
                for i, n in enumerate(options.workers)
            ]
        finally:
            redis_server.stop()
            logs = options.output / "logs"
            logs.mkdir(exist_ok=True)
            for path in (workdir / "logs").glob("*.log"):
                (logs / path.name).write_bytes(path.read_bytes())
    report = BenchWorkerReport(
        started_at=started_at.isoformat(timespec="seconds"),
        command=_command_line(options),
        store=store,
        events=options.events,
        concurrency=options.concurrency,
        poll_delay_s=options.poll_delay_s
        if options.poll_delay_s is not None
        else Settings().worker_poll_delay_s,
        batch=options.batch_size,
        rounds=rounds,
        arq_floor=floor,
        queue_floor=queue_floor,
        round_trips=round_trips,
        machine={"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    )
    (options.output / "bench-worker.json").write_bytes(
        msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"
    )
    (options.output / "bench-worker.md").write_text(render_markdown(report))
    return report


def _command_line(options: BenchWorkerOptions) -> str:
    parts = [
        "gateway bench-worker",
        f"--events {options.events}",
        f"--workers {','.join(map(str, options.workers))}",
        f"--concurrency {options.concurrency}",
        f"--sample {options.sample}",
    ]
    if options.poll_delay_s is not None:
        parts.append(f"--poll-delay {options.poll_delay_s:g}")
    if options.batch is not None:
        parts.append(f"--batch {options.batch}")
    if options.profile_s:
        parts.append(f"--profile {options.profile_s}")
    if options.mongo_url:
        parts.append(f"--mongo-url {redact_url(options.mongo_url)}")
    return " ".join(parts)


def _worker_counts(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {value!r}") from None
    if not counts or any(n < 1 or n > 32 for n in counts):
        raise click.BadParameter("each worker count must be between 1 and 32")
    return counts


def _count_option(flag: str, default: int, help: str | None = None) -> Decorator:
    return click.option(flag, type=click.IntRange(1), default=default, show_default=True, help=help)


@click.command("bench-worker")
@_count_option("--events", 2000)
@click.option(
    "--workers",
    default="1,2,4",
    show_default=True,
    callback=lambda _ctx, _param, value: _worker_counts(value),
    help="Worker process counts to measure.",
)
@_count_option("--concurrency", 20, "Jobs per worker process (GATEWAY_WORKER_CONCURRENCY).")
@mongo_url_option(
    "Measure this MongoDB (a fresh database per round, dropped after) instead of mongoeco."
)
@_count_option("--sample", 50, "Events whose MongoDB round trips are counted.")
@click.option(
    "--poll-delay",
    "poll_delay_s",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Workers' GATEWAY_WORKER_POLL_DELAY_S (default: the product's default).",
)
@click.option(
    "--batch",
    type=click.IntRange(1),
    default=None,
    help="Workers' GATEWAY_WORKER_BATCH (default: the product's default; 1: arq's own runs).",
)
@click.option(
    "--profile",
    "profile_s",
    type=click.IntRange(0),
    default=0,
    help="Seconds of py-spy (100 Hz) on the first configuration's worker during its drain.",
)
@output_option(Path("bench-worker-report"))
def bench_worker_command(**params: Any) -> None:
    """Worker CPU per event and events/s of 1, 2 and 4 workers draining a pre-filled queue,
    against the queue's floor (a no-op job; batched, and arq's own one-job runs); Redis
    commands and MongoDB round trips per event."""
    # The round-trip sample runs the worker's processor in this process: keep its
    # per-job INFO lines out of the benchmark's output.
    configure_logging("WARNING", "console", process="bench-worker")
    options = BenchWorkerOptions(**params)
    try:
        report = bench_worker(options)
    except BenchWorkerError as exc:
        raise click.ClickException(str(exc)) from exc
    render_console(report, Console())
