"""``gateway loadtest``: a Locust run turned into a pass/fail report against docs/contract.md §6.

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
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import redis
from prometheus_client.parser import text_string_to_metric_families
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rich.console import Console

from scripts.proof.loadtest.criteria import evaluate
from scripts.proof.loadtest.options import (
    LOCUSTFILE,
    REPO_ROOT,
    LoadTestError,
    LoadTestOptions,
)
from scripts.proof.loadtest.records import SentRecord, read_records
from scripts.proof.loadtest.report import (
    Collected,
    DeliveryCounts,
    LatencySummary,
    LoadWindow,
    Profile,
    Report,
    accepted_keys,
    count_deliveries,
    latency_from_locust,
    render_markdown,
    request_mix,
)
from scripts.proof.loadtest.target import (
    Endpoints,
    inject_failures,
    open_endpoints,
    restore_failures,
)
from scripts.proof.probes import CpuMeter, ProfileRecorder, describe_store
from scripts.traffic.observe import Drain, KeyState, Observer
from shared.settings import SettingsError, load_settings
from shared.storage.mongo import open_mongo

__all__ = ["run_loadtest"]

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
    with open_endpoints(options, settings, console) as endpoints:
        previous_rules = inject_failures(endpoints, options, console)
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
            restore_failures(endpoints, previous_rules)
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


def _run_locust(
    endpoints: Endpoints,
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
    options: LoadTestOptions, endpoints: Endpoints, console: Console
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
    endpoints: Endpoints, keys: dict[str, str], timeout_s: float, console: Console
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
    endpoints: Endpoints,
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


def _run_facts(
    options: LoadTestOptions, endpoints: Endpoints, started_at: datetime
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
