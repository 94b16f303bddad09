"""``gateway loadtest``: a Locust run turned into a pass/fail report against SPEC §6.

One command, in order:

1. **stack** — start the whole gateway on this machine (:class:`~scripts.devstack.stack.Stack`:
   redis-server, the embedded MongoDB-wire server unless ``--mongo-url`` /
   ``GATEWAY_MONGO_URL`` names a MongoDB, ``gateway init-db``, the API,
   ``--workers`` workers and the mock downstream answering 503 to
   ``--transient-rate`` of deliveries), with retry backoff short enough for
   retries to finish within the drain (:data:`STACK_ENV`); or, with
   ``--target URL``, use a running stack (its ``GATEWAY_*`` variables, e.g.
   ``set -a; . stack.env; set +a`` after ``gateway dev --with-mock-downstream``);
2. **load** — Locust headless in a child process (``scripts/proof/loadtest/locustfile.py``:
   signed requests, resends, out-of-order pairs, mixed event types) with
   ``--users`` users for ``--duration`` seconds at ``--rate`` requests/s in
   total; every answer is recorded per request;
3. **drain** — wait, at most ``--drain-timeout`` s, until the arq queue is
   empty and every accepted key is terminal in ``processed_events``;
4. **collect and judge** — ``processed_events`` of every accepted key, the
   mock downstream's deliveries, the touched shipments' histories and the
   workers' job counters; SC-001..SC-004 (:mod:`scripts.proof.loadtest.report`);
5. **report** — ``report.md``, ``report.json``, Locust's ``locust.html`` (and
   its CSV/JSON statistics), child logs under ``logs/``; exit 1 on any miss.

Locust runs only in its own process: it monkey-patches with gevent on import.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import click
import httpx
import msgspec
import redis
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rich.console import Console

import scripts
from scripts.devstack.stack import Stack, StackOptions
from scripts.harness.services import ServiceError, free_port
from scripts.proof.loadtest.records import SentRecord, read_records
from scripts.proof.loadtest.report import (
    Collected,
    Criterion,
    DeliveryCounts,
    LatencySummary,
    LoadWindow,
    Profile,
    Report,
    Thresholds,
    accepted_keys,
    count_deliveries,
    evaluate,
    latency_from_locust,
    render_markdown,
    request_mix,
)
from scripts.proof.probes import CpuMeter, ProfileRecorder
from scripts.traffic.observe import Drain, KeyState, Observer
from shared.settings import Settings, SettingsError, load_settings, redact_url
from shared.storage.mongo import open_mongo

__all__ = [
    "STACK_ENV",
    "LoadTestError",
    "LoadTestOptions",
    "describe_store",
    "loadtest_command",
    "run_loadtest",
]

REPO_ROOT: Final = Path(scripts.__file__).resolve().parent.parent
LOCUSTFILE: Final = Path(__file__).resolve().parent / "locustfile.py"
STACK_ENV: Final[dict[str, str]] = {
    # Retries within seconds, not minutes, so a run drains in a bounded time:
    # delay bounds 0.2, 0.8, 3.2, 5, 5 s (full jitter), 6 attempts.
    "GATEWAY_BACKOFF_BASE_S": "0.2",
    "GATEWAY_BACKOFF_MULTIPLIER": "4",
    "GATEWAY_BACKOFF_CAP_S": "5",
    "GATEWAY_MAX_ATTEMPTS": "6",
}
"""Worker settings the load test's own stack runs with (reported in ``report.md``)."""


class LoadTestError(Exception):
    """The load test could not run (as opposed to running and missing a target)."""


@dataclass
class LoadTestOptions:
    """Everything ``gateway loadtest`` was asked to do."""

    users: int = 100
    duration_s: int = 60
    rate_per_s: float = 40.0
    spawn_rate: float | None = None
    output: Path = Path("loadtest-report")
    target: str | None = None
    workers: int = 2
    transient_rate: float = 0.2
    seed: int = 1
    duplicate_ratio: float = 0.1
    out_of_order_ratio: float = 0.1
    drain_timeout_s: float = 300.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    mongo_url: str | None = None
    mongo_db: str = "gateway"
    redis_url: str | None = None
    mock_url: str | None = None
    source: str | None = None
    port: int | None = None
    py_spy: str | None = None
    """Path of a py-spy binary: profile the API, worker-1 and the embedded MongoDB."""

    def command_line(self) -> str:
        """The ``gateway loadtest`` command that reproduces this run (URL passwords redacted)."""
        defaults = LoadTestOptions()
        args = ["gateway", "loadtest", "--users", str(self.users)]
        args += ["--duration", str(self.duration_s), "--rate", f"{self.rate_per_s:g}"]
        args += ["--workers", str(self.workers), "--transient-rate", f"{self.transient_rate:g}"]
        args += ["--seed", str(self.seed)]
        optional: list[tuple[str, object, object]] = [
            ("--spawn-rate", self.spawn_rate, defaults.spawn_rate),
            ("--duplicate-ratio", self.duplicate_ratio, defaults.duplicate_ratio),
            ("--out-of-order-ratio", self.out_of_order_ratio, defaults.out_of_order_ratio),
            ("--drain-timeout", self.drain_timeout_s, defaults.drain_timeout_s),
            ("--max-p95-ms", self.thresholds.max_p95_ms, defaults.thresholds.max_p95_ms),
            (
                "--max-error-rate",
                self.thresholds.max_error_rate,
                defaults.thresholds.max_error_rate,
            ),
            (
                "--min-recovery",
                self.thresholds.min_recovery_ratio,
                defaults.thresholds.min_recovery_ratio,
            ),
            ("--target", self.target, None),
            ("--mongo-url", self.mongo_url and redact_url(self.mongo_url), None),
            ("--mongo-db", self.mongo_db, defaults.mongo_db),
            ("--redis-url", self.redis_url and redact_url(self.redis_url), None),
            ("--mock-url", self.mock_url, None),
            ("--source", self.source, None),
            ("--py-spy", self.py_spy, None),
        ]
        for flag, value, default in optional:
            if value is not None and value != default:
                args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        args += ["--output", str(self.output)]
        return shlex.join(args)


@dataclass
class _Endpoints:
    api_url: str
    mongo_url: str
    mongo_db: str
    redis_url: str
    queue_name: str
    mock_url: str | None
    source: str
    locust_env: dict[str, str]
    worker_metrics_ports: list[int] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    embedded_mongo: bool = False
    stack: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- the run


def run_loadtest(options: LoadTestOptions, console: Console | None = None) -> Report:
    """Run the whole load test and write its report; the report says whether it passed."""
    console = console or Console(stderr=True)
    output = options.output
    output.mkdir(parents=True, exist_ok=True)
    records_dir = output / "records"
    records_dir.mkdir(exist_ok=True)
    for stale in records_dir.glob("*.jsonl"):
        stale.unlink()
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        raise LoadTestError(f"invalid settings: {exc}") from exc
    started_at = datetime.now(UTC)
    with _endpoints(options, settings, console) as endpoints:
        previous_rules = _inject_failures(endpoints, options, console)
        try:
            latency, window, profiles = _run_locust(endpoints, options, records_dir, console)
            records = read_records(records_dir)
            keys = accepted_keys(records)
            console.log(
                f"Locust done: {latency.requests} requests, {len(keys)} keys accepted; draining…"
            )
            drain, states, histories = asyncio.run(
                _drain_and_read(endpoints, keys, options.drain_timeout_s, console)
            )
            collected = _collect(endpoints, options, latency, records, drain, states, histories)
            worker_jobs = _worker_jobs(endpoints.worker_metrics_ports)
        finally:
            _restore_failures(endpoints, previous_rules)
    criteria = evaluate(collected, options.thresholds)
    report = Report(
        passed=all(c.passed for c in criteria),
        criteria=criteria,
        run=_run_facts(options, endpoints, started_at),
        requests=request_mix(records),
        latency=latency,
        drain=drain,
        worker_jobs=worker_jobs,
        window=window,
        profiles=profiles,
    )
    (output / "report.json").write_bytes(
        msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"
    )
    (output / "report.md").write_text(render_markdown(report))
    return report


@contextlib.contextmanager
def _endpoints(
    options: LoadTestOptions, settings: Settings, console: Console
) -> Iterator[_Endpoints]:
    if options.target is not None:
        yield _target_endpoints(options, settings)
        return
    stack = Stack(
        StackOptions(
            port=options.port or free_port(),
            workers=options.workers,
            redis_url=options.redis_url,
            mongo_url=options.mongo_url,
            mongo_db=options.mongo_db,
            mock_downstream=True,
            mock_args=[
                "--transient-rate",
                f"{options.transient_rate:g}",
                "--seed",
                str(options.seed),
            ],
            env=STACK_ENV,
            log_dir=options.output / "logs",
            shutdown_grace_s=5,
        )
    )
    console.log(f"starting the stack: API, {options.workers} workers, mock downstream…")
    try:
        stack.start()
    except ServiceError as exc:
        raise LoadTestError(
            f"the stack did not start: {exc} (logs: {options.output / 'logs'})"
        ) from exc
    try:
        env = dict(os.environ)
        if stack.generated_source is not None:
            env.pop("GATEWAY_SOURCES", None)
            env["GATEWAY_SOURCES_FILE"] = str(stack.sources_file)
        sources = load_settings(env).sources
        source = options.source or next(iter(sources))
        if source not in sources:
            raise LoadTestError(f"--source {source!r} is not a configured source")
        yield _Endpoints(
            api_url=stack.api_url,
            mongo_url=stack.mongo_url,
            mongo_db=options.mongo_db,
            redis_url=stack.redis_url,
            queue_name=settings.queue_name,
            mock_url=stack.mock_url,
            source=source,
            locust_env=env,
            worker_metrics_ports=list(stack.worker_metrics_ports),
            pids=_stack_pids(stack),
            embedded_mongo=stack.mongo_is_embedded,
            stack={
                "mode": "started by this command",
                "workers": options.workers,
                "worker concurrency": settings.worker_concurrency,
                "worker poll delay": f"{settings.worker_poll_delay_s:g} s",
                "worker settings": ", ".join(f"{k}={v}" for k, v in STACK_ENV.items()),
                "mock downstream": (
                    f"503 for {options.transient_rate:.0%} of deliveries (seed {options.seed})"
                ),
                "redis": "redis-server started by this command"
                if options.redis_url is None
                else redact_url(options.redis_url),
                "queue": settings.queue_name,
            },
        )
    finally:
        console.log("stopping the stack…")
        stack.stop()


def _stack_pids(stack: Stack) -> dict[str, int]:
    """The stack's processes by name (API, workers, mock, and the stores started here)."""
    pids = {child.name: child.pid for child in stack.children() if child.pid is not None}
    for name, service in (("mongo", stack.mongo), ("redis", stack.redis)):
        if service is not None and service.process is not None:
            pids[name] = service.process.pid
    return pids


def _target_endpoints(options: LoadTestOptions, settings: Settings) -> _Endpoints:
    if not settings.sources:
        raise LoadTestError(
            "--target needs the stack's sources to sign with: set GATEWAY_SOURCES_FILE "
            "(or source the stack.env that `gateway dev` wrote)"
        )
    source = options.source or next(iter(settings.sources))
    if source not in settings.sources:
        raise LoadTestError(f"--source {source!r} is not a configured source")
    mongo_url = options.mongo_url or settings.mongo_url
    redis_url = options.redis_url or settings.redis_url
    return _Endpoints(
        api_url=options.target.rstrip("/") if options.target else "",
        mongo_url=mongo_url,
        mongo_db=options.mongo_db,
        redis_url=redis_url,
        queue_name=settings.queue_name,
        mock_url=options.mock_url,
        source=source,
        locust_env=dict(os.environ),
        stack={
            "mode": f"running stack at {options.target}",
            "mock downstream": options.mock_url or "none given (--mock-url): deliveries unchecked",
            "redis": redact_url(redis_url),
            "queue": settings.queue_name,
        },
    )


def _inject_failures(
    endpoints: _Endpoints, options: LoadTestOptions, console: Console
) -> dict[str, Any] | None:
    """Make the mock fail transiently (it already does when we started it); the old rules."""
    if endpoints.mock_url is None:
        if options.target is not None:
            console.log("no --mock-url: downstream deliveries will not be checked")
        return None
    with httpx.Client(base_url=endpoints.mock_url, timeout=10) as http:
        try:
            before = http.post("/control", json={}).raise_for_status().json()
            http.post(
                "/control", json={"transient_rate": options.transient_rate, "seed": options.seed}
            ).raise_for_status()
        except httpx.HTTPError as exc:
            raise LoadTestError(f"mock downstream at {endpoints.mock_url}: {exc}") from exc
    return dict(before)


def _restore_failures(endpoints: _Endpoints, previous: dict[str, Any] | None) -> None:
    if endpoints.mock_url is None or previous is None:
        return
    with (
        httpx.Client(base_url=endpoints.mock_url, timeout=10) as http,
        contextlib.suppress(httpx.HTTPError),
    ):
        http.post("/control", json={"transient_rate": previous.get("transient_rate", 0.0)})


def _run_locust(
    endpoints: _Endpoints,
    options: LoadTestOptions,
    records_dir: Path,
    console: Console,
) -> tuple[LatencySummary, LoadWindow, list[Profile]]:
    """Run Locust to the end, sampling queue depth and per-process CPU meanwhile."""
    output = options.output
    env = dict(endpoints.locust_env)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            "LOADTEST_SOURCE": endpoints.source,
            "LOADTEST_RATE": f"{options.rate_per_s:g}",
            "LOADTEST_DUPLICATE_RATIO": f"{options.duplicate_ratio:g}",
            "LOADTEST_OUT_OF_ORDER_RATIO": f"{options.out_of_order_ratio:g}",
            "LOADTEST_RECORD_DIR": str(records_dir),
            "LOADTEST_RUN_ID": uuid.uuid4().hex[:6],
            "LOADTEST_SEED": str(options.seed),
        }
    )
    spawn_rate = options.spawn_rate or float(options.users)
    command = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "--users", str(options.users),
        "--spawn-rate", f"{spawn_rate:g}",
        "--run-time", f"{options.duration_s}s",
        "--stop-timeout", "10",
        "--host", endpoints.api_url,
        "--csv", str(output / "locust"),
        "--html", str(output / "locust.html"),
        "--json-file", str(output / "locust"),
        "--only-summary",
        "--exit-code-on-error", "0",
    ]  # fmt: skip
    console.log(
        f"Locust: {options.users} users, {options.duration_s} s, "
        f"target {options.rate_per_s:g} requests/s → {endpoints.api_url}"
    )
    log_path = output / "locust.log"
    depth: list[int] = []
    with (
        log_path.open("wb") as log,
        redis.Redis.from_url(endpoints.redis_url, socket_timeout=10) as queue,
    ):
        started = time.monotonic()
        children_before = _reaped_children_cpu_s()
        locust = subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        meter = CpuMeter(endpoints.pids)
        meter.start()
        profiler = _start_profiler(options, endpoints, console)
        try:
            deadline = started + options.duration_s + 120
            while locust.poll() is None:
                if time.monotonic() > deadline:
                    raise LoadTestError(f"Locust did not finish in time (log: {log_path})")
                with contextlib.suppress(redis.RedisError):
                    depth.append(int(queue.zcard(endpoints.queue_name)))
                time.sleep(1)
        finally:
            if locust.poll() is None:
                locust.kill()
                locust.wait()
        cpu = meter.stop()
        # Locust has exited and been reaped: its CPU is in our children's rusage.
        cpu["locust (load generator)"] = round(_reaped_children_cpu_s() - children_before, 2)
        seconds = round(time.monotonic() - started, 1)
    profiles = _finish_profiler(profiler, console)
    stats_path = output / "locust.json"
    if locust.returncode != 0 or not stats_path.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise LoadTestError(f"Locust exited {locust.returncode} (log: {log_path}):\n{tail}")
    latency = latency_from_locust(json.loads(stats_path.read_text()))
    return latency, LoadWindow(seconds=seconds, cpu_s=cpu, queue_depth=depth), profiles


def _reaped_children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _start_profiler(
    options: LoadTestOptions, endpoints: _Endpoints, console: Console
) -> ProfileRecorder | None:
    if options.py_spy is None:
        return None
    targets = {
        name: pid for name, pid in endpoints.pids.items() if name in ("api", "worker-1", "mongo")
    }
    if not targets:
        console.log("--py-spy: no process of ours to profile (a --target stack)")
        return None
    # Skip the first seconds (users starting, connections opening) and stop before the end.
    duration = max(5, options.duration_s - 10)
    recorder = ProfileRecorder(options.py_spy, targets, options.output / "profile")
    recorder.start(duration)
    console.log(f"py-spy: sampling {', '.join(targets)} for {duration} s")
    return recorder


def _finish_profiler(recorder: ProfileRecorder | None, console: Console) -> list[Profile]:
    if recorder is None:
        return []
    profiles, errors = recorder.finish()
    for error in errors:
        console.log(f"[yellow]py-spy failed: {error}")
    return profiles


async def _drain_and_read(
    endpoints: _Endpoints, keys: dict[str, str], timeout_s: float, console: Console
) -> tuple[Drain, dict[str, KeyState], dict[str, list[str]]]:
    """Wait for the drain (:class:`~scripts.traffic.observe.Observer`), then read the outcome."""
    mongo = open_mongo(endpoints.mongo_url, timeout_s=10)
    client = Redis.from_url(endpoints.redis_url, socket_timeout=10)
    observer = Observer(mongo[endpoints.mongo_db], client, endpoints.queue_name)
    try:
        drain = await observer.drain(keys, timeout_s=timeout_s, progress=console.log)
        console.log(
            f"drained in {drain.seconds} s"
            if drain.drained
            else f"NOT drained after {drain.seconds} s: {drain.queue_left} jobs left"
        )
        states = await observer.states(sorted(keys))
        histories = await observer.histories(sorted(set(keys.values())))
    except (RedisError, PyMongoError) as exc:
        raise LoadTestError(f"cannot read the outcome from Redis or MongoDB: {exc}") from exc
    finally:
        await client.aclose()
        await mongo.close()
    return drain, states, histories


class _MockDelivery(msgspec.Struct):
    webhook_id: str | None
    status: int | None = None
    disconnected: bool = False


class _MockLog(msgspec.Struct):
    deliveries: list[_MockDelivery]


def _deliveries(mock_url: str) -> DeliveryCounts:
    try:
        response = httpx.get(f"{mock_url}/deliveries", timeout=60)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise LoadTestError(f"cannot read the mock downstream's deliveries: {exc}") from exc
    log = msgspec.json.decode(response.content, type=_MockLog)
    return count_deliveries((d.webhook_id, d.status, d.disconnected) for d in log.deliveries)


def _collect(
    endpoints: _Endpoints,
    options: LoadTestOptions,
    latency: LatencySummary,
    records: list[SentRecord],
    drain: Drain,
    states: dict[str, KeyState],
    histories: dict[str, list[str]],
) -> Collected:
    deliveries = _deliveries(endpoints.mock_url) if endpoints.mock_url else None
    return Collected(
        latency=latency,
        records=records,
        states=states,
        deliveries=deliveries,
        histories=histories,
        drain=drain,
        expect_transient=endpoints.mock_url is not None and options.transient_rate > 0,
    )


_JOB_SECONDS: Final = "gateway_worker_job_duration_seconds"


def _worker_jobs(ports: Sequence[int]) -> dict[str, float]:
    """The workers' job counters and run times, summed over the workers' ``/metrics``.

    ``gateway_worker_jobs_total`` by outcome, ``gateway_worker_retries_total``
    by code (``retry:<code>``), and from the job-duration histogram the mean
    run time (``run_s_mean``) and the share of runs longer than the poll
    delay's default 0.5 s (``runs_over_0.5s``).
    """
    totals: dict[str, float] = {}
    for port in ports:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "gateway_worker_jobs_total":
                    name = sample.labels.get("outcome", "?")
                elif sample.name == "gateway_worker_retries_total":
                    name = f"retry:{sample.labels.get('code', '?')}"
                elif sample.name in (f"{_JOB_SECONDS}_sum", f"{_JOB_SECONDS}_count"):
                    name = sample.name.removeprefix(_JOB_SECONDS)
                elif sample.name == f"{_JOB_SECONDS}_bucket" and sample.labels.get("le") == "0.5":
                    name = "_le_0.5"
                else:
                    continue
                totals[name] = totals.get(name, 0.0) + sample.value
    runs = totals.pop("_count", 0.0)
    run_seconds = totals.pop("_sum", 0.0)
    within = totals.pop("_le_0.5", 0.0)
    found = {name: value for name, value in sorted(totals.items()) if value}
    if runs:
        found["run_s_mean"] = round(run_seconds / runs, 3)
        found["runs_over_0.5s"] = round(1 - within / runs, 3)
    return found


def describe_store(mongo_url: str, *, embedded: bool) -> str:
    """Which MongoDB the run measured: the embedded emulation or a real server (version)."""
    if embedded:
        return (
            f"mongoeco at {mongo_url} — the embedded, in-memory MongoDB-wire emulation "
            "(one Python process), not a real MongoDB"
        )
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
        with client:
            info = client.admin.command("buildInfo")
    except PyMongoError as exc:
        return f"MongoDB at {redact_url(mongo_url)} (version unknown: {type(exc).__name__})"
    if info.get("gitVersion") == "mongoeco":
        return f"mongoeco at {redact_url(mongo_url)} (MongoDB-wire emulation, not a real MongoDB)"
    return f"MongoDB {info.get('version', '?')} at {redact_url(mongo_url)}"


def _run_facts(
    options: LoadTestOptions, endpoints: _Endpoints, started_at: datetime
) -> dict[str, Any]:
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": options.command_line(),
        "target": endpoints.api_url,
        "source": endpoints.source,
        "store": describe_store(endpoints.mongo_url, embedded=endpoints.embedded_mongo),
        "users": options.users,
        "duration_s": options.duration_s,
        "rate_per_s": options.rate_per_s,
        "duplicate_ratio": options.duplicate_ratio,
        "out_of_order_ratio": options.out_of_order_ratio,
        "transient_rate": options.transient_rate,
        "drain_timeout_s": options.drain_timeout_s,
        "thresholds": msgspec.to_builtins(options.thresholds),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "stack": endpoints.stack,
    }


# ---------------------------------------------------------------- the command


def _print_summary(report: Report, output: Path, console: Console) -> None:
    verdict = "[green]PASS[/green]" if report.passed else "[bold red]MISS[/bold red]"
    console.print(f"Load test: {verdict}")
    for criterion in report.criteria:
        console.print(
            f"  {_verdict(criterion)}  {criterion.id} {criterion.title}: {criterion.measured}"
            f"  [dim](target: {criterion.target})[/dim]",
            soft_wrap=True,
        )
    console.print(f"report: {output / 'report.md'} (also report.json, locust.html)", soft_wrap=True)


def _verdict(criterion: Criterion) -> str:
    return "[green]PASS[/green]" if criterion.passed else "[bold red]MISS[/bold red]"


@click.command("loadtest")
@click.option("--users", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option(
    "--duration", "duration_s", type=click.IntRange(1), default=60, show_default=True,
    help="Seconds of load.",
)  # fmt: skip
@click.option(
    "--rate",
    "rate_per_s",
    type=click.FloatRange(0),
    default=40.0,
    show_default=True,
    help="Target requests/s of all users together (0: as fast as answers come).",
)
@click.option("--spawn-rate", type=click.FloatRange(0, min_open=True), help="Users started per s.")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("loadtest-report"),
    show_default=True,
)
@click.option("--target", help="Base URL of a running gateway (default: start one here).")
@click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True)
@click.option(
    "--transient-rate",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Share of downstream deliveries the mock answers 503.",
)
@click.option(
    "--seed", type=int, default=1, show_default=True, help="Seed of traffic and failures."
)
@click.option("--duplicate-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--out-of-order-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option(
    "--drain-timeout", "drain_timeout_s", type=click.FloatRange(0), default=300.0, show_default=True
)
@click.option(
    "--max-p95-ms", type=click.FloatRange(0, min_open=True), default=100.0, show_default=True
)
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--min-recovery", type=click.FloatRange(0, 1), default=0.99, show_default=True)
@click.option("--mongo-url", envvar="GATEWAY_MONGO_URL", help="MongoDB to use / to check.")
@click.option("--mongo-db", envvar="GATEWAY_MONGO_DB", default="gateway", show_default=True)
@click.option("--redis-url", envvar="GATEWAY_REDIS_URL", help="Redis to use / to watch.")
@click.option(
    "--mock-url",
    envvar="GATEWAY_MOCK_DOWNSTREAM_URL",
    help="With --target: the running mock downstream's base URL.",
)
@click.option("--source", help="Source to sign for (default: the first configured).")
@click.option(
    "--py-spy",
    "py_spy",
    type=click.Path(exists=True, dir_okay=False),
    help="py-spy binary: profile the API, worker-1 and the embedded MongoDB during the load.",
)
def loadtest_command(
    users: int,
    duration_s: int,
    rate_per_s: float,
    spawn_rate: float | None,
    output: Path,
    target: str | None,
    workers: int,
    transient_rate: float,
    seed: int,
    duplicate_ratio: float,
    out_of_order_ratio: float,
    drain_timeout_s: float,
    max_p95_ms: float,
    max_error_rate: float,
    min_recovery: float,
    mongo_url: str | None,
    mongo_db: str,
    redis_url: str | None,
    mock_url: str | None,
    source: str | None,
    py_spy: str | None,
) -> None:
    """Load the gateway with Locust and judge the run against SPEC §6 (exit 1 on any miss).

    Without --target it starts the whole stack here (mock downstream failing
    transiently --transient-rate of the time); with --target it loads a running
    stack, reading its GATEWAY_* variables (source the stack.env of `gateway dev`).
    """
    options = LoadTestOptions(
        users=users,
        duration_s=duration_s,
        rate_per_s=rate_per_s,
        spawn_rate=spawn_rate,
        output=output,
        target=target,
        workers=workers,
        transient_rate=transient_rate,
        seed=seed,
        duplicate_ratio=duplicate_ratio,
        out_of_order_ratio=out_of_order_ratio,
        drain_timeout_s=drain_timeout_s,
        thresholds=Thresholds(
            max_p95_ms=max_p95_ms, max_error_rate=max_error_rate, min_recovery_ratio=min_recovery
        ),
        mongo_url=mongo_url or None,
        mongo_db=mongo_db,
        redis_url=redis_url or None,
        mock_url=mock_url or None,
        source=source,
        py_spy=py_spy,
    )
    console = Console(stderr=True)
    try:
        report = run_loadtest(options, console)
    except LoadTestError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_summary(report, output, Console())
    if not report.passed:
        sys.exit(1)
