"""``gateway bench-ingest``: the ingest path against a bare Litestar endpoint (docs/contract.md §6).

One run serves each target, one at a time, with the same uvicorn command line
(:mod:`scripts.proof.bench.apps`): a bare endpoint answering 202, and the real
gateway app with its signature check, validation, logging, metrics and Redis
enqueue — on the canonical route, and optionally on carrier adapters' routes
(``--route``) and with replicated acknowledgement (``--ack-replicas``, replicas
attached to the benchmark's Redis for the whole run). wrk drives each at 100
connections with pre-signed requests, every one carrying a unique event id, so
the real path enqueues every request.

Per round: for each target (the order reverses between rounds) start the
server, flush Redis, warm up, flush Redis, measure, stop the server. Each
gateway target is compared with the round's bare endpoint: requests/s ratio
(≥ 0.60 every round), p99 (< 50 ms every round) and server CPU µs per request
(≤ 1.5× bare, median), each with a verdict.

wrk's Lua has no HMAC, so the requests are signed in Python at the start of
each round (well inside the 300 s timestamp tolerance), by the route's own
adapter, and written as raw HTTP requests to one file per wrk thread; the Lua
script replays them in order and counts response statuses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
import msgspec
import redis
from rich.console import Console

from scripts.harness.sentinel import SentinelTopology
from scripts.harness.services import EmbeddedMongo
from scripts.proof.bench.ingest.model import (
    BARE,
    CANONICAL,
    FACTORIES,
    POOL_RATE_PER_S,
    QUEUE_NAME,
    ROUTES,
    SIGNATURE_TOLERANCE_S,
    SOURCE,
    TARGET_START_S,
    BenchError,
    BenchOptions,
    BenchReport,
    RunResult,
    Target,
    TargetProfile,
    WrkStats,
    targets_of,
)
from scripts.proof.bench.ingest.report import (
    build_report,
    render,
)
from scripts.proof.bench.ingest.server import (
    Server,
    pinned_redis,
)
from scripts.proof.bench.ingest.wrk import (
    WRK_LUA,
    RouteRequests,
    parse_wrk_output,
    run_wrk,
    write_request_pool,
)
from scripts.proof.options import ack_replicas_option, output_option
from scripts.proof.probes import cpu_seconds, find_py_spy, summarize_collapsed_stacks

__all__ = [
    "BenchOptions",
    "BenchReport",
    "RunResult",
    "bench_ingest",
    "bench_ingest_command",
    "parse_wrk_output",
]

# ---------------------------------------------------------------- the run


class _Bench:
    def __init__(self, options: BenchOptions, workdir: Path, console: Console) -> None:
        self.options = options
        self.workdir = workdir
        self.console = console
        self.targets = targets_of(options)
        self.requests = {t.route: RouteRequests(t.route) for t in self.targets}
        self.lua = workdir / "bench.lua"
        self.lua.write_text(WRK_LUA)
        for route in self.requests:
            self.data_dir(route).mkdir()
        self.pool = options.pool or POOL_RATE_PER_S * max(options.duration_s, options.warmup_s)
        self.redis_url = ""
        self.redis_pids: list[int] = []
        """The benchmark's redis-server, then its replicas."""
        self.mongo_url = ""
        self.label = ""
        self.signed_at: dict[str, float] = {}
        """When each route's pool was signed (``time.time()``)."""

    def data_dir(self, route: str) -> Path:
        return self.workdir / f"requests-{route}"

    def env(self, target: Target) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        sources = {SOURCE: self.requests[target.route].source}
        env.update(
            GATEWAY_REDIS_URL=self.redis_url,
            GATEWAY_MONGO_URL=self.mongo_url,
            GATEWAY_MONGO_DB="gateway_bench",
            GATEWAY_QUEUE_NAME=QUEUE_NAME,
            GATEWAY_SOURCES=msgspec.json.encode(sources).decode(),
            GATEWAY_ACK_REPLICAS=str(target.ack_replicas),
            GATEWAY_LOG_LEVEL="INFO",
            GATEWAY_LOG_FORMAT="json",
            # As in the container image: every log line is written as it happens.
            PYTHONUNBUFFERED="1",
        )
        return env

    def new_pools(self, label: str) -> None:
        """From now on, sign each route's pool afresh (new event ids) before its next target."""
        self.label = label
        self.signed_at.clear()

    def ensure_pool(self, route: str) -> None:
        """Sign ``route``'s pool unless its signatures outlast one more target's runs."""
        needed_s = self.options.warmup_s + self.options.duration_s + TARGET_START_S
        signed_at = self.signed_at.get(route)
        if signed_at is not None and time.time() - signed_at + needed_s < SIGNATURE_TOLERANCE_S:
            return
        started = time.monotonic()
        self.signed_at[route] = time.time()
        write_request_pool(
            self.data_dir(route),
            self.requests[route],
            count=self.pool,
            files=self.options.threads,
            now=self.signed_at[route],
            nonce=f"{self.label}{secrets.token_hex(4)}",
        )
        self.console.log(
            f"signed {self.pool:,} {route} requests in {time.monotonic() - started:.1f} s"
        )

    def flush(self) -> None:
        with redis.Redis.from_url(self.redis_url) as client:
            client.flushall()

    def wrk(self, url: str, seconds: int, target: Target) -> tuple[WrkStats, str, float]:
        """One wrk run of ``seconds`` against ``url`` with ``target``'s pool and our CPUs."""
        return run_wrk(
            url,
            seconds=seconds,
            options=self.options,
            lua=self.lua,
            data_dir=self.data_dir(target.route),
        )

    def redis_cpu_s(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.redis_pids)

    def queued(self) -> int:
        with redis.Redis.from_url(self.redis_url) as client:
            return int(client.zcard(QUEUE_NAME))

    def wait_calls(self) -> int:
        """``WAIT`` commands the benchmark's Redis has served (replicated acknowledgements)."""
        with redis.Redis.from_url(self.redis_url) as client:
            stats = client.info("commandstats").get("cmdstat_wait", {})
        return int(stats.get("calls", 0))

    def server(self, target: Target, log_name: str) -> Server:
        factory = FACTORIES["bare"] if target.bare else self.options.ingest_factory
        log = self.workdir / f"server-{log_name}.log"
        return Server(factory, env=self.env(target), options=self.options, log=log)

    def probe(self, server: Server, target: Target) -> None:
        """One request of ``target``'s route must be accepted before wrk starts."""
        token = secrets.token_hex(8)
        body, headers = self.requests[target.route].build(
            f"evt_probe_{token}", f"shp_probe{token}", time.time()
        )
        headers["content-type"] = "application/json"
        response = httpx.post(server.url, content=body, headers=headers, timeout=10)
        if response.status_code != 202:
            log_tail = server.log.read_text(errors="replace").splitlines()[-20:]
            raise BenchError(
                f"{target.name} answered the probe with {response.status_code}: "
                f"{response.text[:500]}\n" + "\n".join(log_tail)
            )

    def warm_up(self, server: Server, target: Target) -> None:
        """Probe, then (with a warm-up) load the server; Redis is flushed after each."""
        self.probe(server, target)
        self.flush()
        if self.options.warmup_s > 0:
            warm, raw, _ = self.wrk(server.url, self.options.warmup_s, target)
            self._check(target, warm, raw, phase="warm-up")
            self.flush()

    def measure(self, round_no: int, target: Target) -> RunResult:
        self.ensure_pool(target.route)
        with self.server(target, target.name) as server:
            self.warm_up(server, target)
            assert server.process is not None
            server_cpu_s, redis_cpu_s, wait_calls = (
                cpu_seconds(server.process.pid, with_descendants=True),
                self.redis_cpu_s(),
                self.wait_calls(),
            )
            stats, raw, wrk_cpu_s = self.wrk(server.url, self.options.duration_s, target)
            server_cpu_s = cpu_seconds(server.process.pid, with_descendants=True) - server_cpu_s
            redis_cpu_s = self.redis_cpu_s() - redis_cpu_s
            wait_calls = self.wait_calls() - wait_calls
            self._check(target, stats, raw, phase="run")
            enqueued = self.queued()
            if self.options.output is not None:
                (self.options.output / f"wrk-round{round_no}-{target.name}.txt").write_text(raw)
        enqueues = not target.bare and self.options.ingest_factory != FACTORIES["bare"]
        if enqueues and enqueued < stats.status_202:
            raise BenchError(
                f"{stats.status_202} requests answered 202 but only {enqueued} jobs are queued"
            )
        if enqueues and target.ack_replicas and not wait_calls:
            raise BenchError(f"{target.name} sent no WAIT: its 202s were not replicated first")
        result = RunResult(
            round=round_no,
            target=target.name,
            wrk=stats,
            enqueued=enqueued,
            cpu_pct={
                name: round(100 * cpu_s / stats.duration_s, 1)
                for name, cpu_s in (
                    ("server", server_cpu_s),
                    ("redis", redis_cpu_s),
                    ("wrk", wrk_cpu_s),
                )
            },
            load_avg_1m=round(os.getloadavg()[0], 2),
            server_us_per_request=round(1e6 * server_cpu_s / max(1, stats.requests), 1),
            wait_calls=wait_calls,
        )
        self.console.log(
            f"round {round_no} {target.name:14}: {stats.requests_per_s:9,.0f} req/s  "
            f"p50 {stats.p50_ms:6.2f} ms  p99 {stats.p99_ms:6.2f} ms  "
            f"202={stats.status_202:,} 200={stats.status_200:,} other={stats.status_other}  "
            f"queued={enqueued:,}  server {result.server_us_per_request:.0f} µs/req  "
            f"cpu% server {result.cpu_pct['server']:.0f} "
            f"redis {result.cpu_pct['redis']:.0f} wrk {result.cpu_pct['wrk']:.0f}"
        )
        return result

    def _check(self, target: Target, stats: WrkStats, raw: str, *, phase: str) -> None:
        if stats.pool_wraps:
            raise BenchError(
                f"{target.name} {phase}: wrk ran out of signed requests ({stats.requests:,} "
                f"sent, pool {self.pool:,}); repeated event ids would be duplicates: raise --pool"
            )
        if stats.status_other or stats.socket_errors:
            self.console.print(raw)
            self.console.log(
                f"[bold red]{target.name} {phase}: {stats.status_other} non-2xx responses, "
                f"{stats.socket_errors} socket errors"
            )

    def profile(self, py_spy: str, target: Target) -> TargetProfile:
        """Sample ``target``'s server with py-spy during one run of wrk."""
        raw_path = (self.options.output or self.workdir) / f"profile-{target.name}.txt"
        self.ensure_pool(target.route)
        with self.server(target, f"profile-{target.name}") as server:
            assert server.process is not None
            self.warm_up(server, target)
            # --nonblocking: read the stacks without pausing the server, so the
            # sampled run is barely slower than an unsampled one.
            command = [py_spy, "record", "--pid", str(server.process.pid), "--subprocesses"]
            command += ["--nonblocking", "--rate", "250", "--format", "raw", "--nolineno"]
            command += ["--duration", str(self.options.duration_s), "--output", str(raw_path)]
            cpu_before = cpu_seconds(server.process.pid, with_descendants=True)
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            stats, _, _ = self.wrk(server.url, self.options.duration_s, target)
            cpu_s = cpu_seconds(server.process.pid, with_descendants=True) - cpu_before
            _, spy_err = spy.communicate(timeout=60)
            if spy.returncode != 0:
                raise BenchError(f"py-spy failed: {spy_err.decode(errors='replace')}")
        summary = summarize_collapsed_stacks(raw_path.read_text().splitlines())
        self.console.log(
            f"profiled {target.name}: {stats.requests_per_s:,.0f} req/s; stacks in {raw_path}"
        )
        return TargetProfile(
            requests_per_s=stats.requests_per_s,
            server_cpu_pct=round(100 * cpu_s / stats.duration_s, 1),
            us_per_request=round(1e6 * cpu_s / max(1, stats.requests), 1),
            packages=summary["packages"],
            self_time=summary["self"],
            inclusive=summary["inclusive"],
        )


def _attach_replicas(
    stack: contextlib.ExitStack, bench: _Bench, primary_port: int, directory: Path
) -> None:
    """Start ``--ack-replicas`` redis-servers beside the primary, as its replicas, in sync."""
    count, cpus = bench.options.ack_replicas, bench.options.redis_cpus
    for n in range(1, count + 1):
        replica = stack.enter_context(pinned_redis(directory / f"replica-{n}", cpus))
        with redis.Redis.from_url(replica.url) as client:
            client.replicaof("127.0.0.1", str(primary_port))
        bench.redis_pids.append(replica.process.pid if replica.process else 0)
    with redis.Redis.from_url(bench.redis_url) as client:
        SentinelTopology.wait_until(
            lambda: int(client.wait(count, 500)) >= count,
            f"{count} replica(s) acknowledge the writes of port {primary_port}",
            timeout_s=60,
        )


@contextlib.contextmanager
def _machine_lock(console: Console) -> Iterator[None]:
    """One benchmark at a time on this machine: two would measure each other."""
    path = Path(tempfile.gettempdir()) / "gateway-bench-ingest.lock"
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.log(f"another bench-ingest run holds {path}; waiting for it to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def bench_ingest(options: BenchOptions, console: Console | None = None) -> BenchReport:
    """Run the benchmark and return its report (nothing printed but progress)."""
    console = console or Console(stderr=True)
    if shutil.which("wrk") is None:
        raise BenchError(
            "wrk is not installed: the benchmark needs it (Debian: apt-get install -y wrk)"
        )
    pinned = options.server_cpus or options.redis_cpus or options.client_cpus
    if pinned and shutil.which("taskset") is None:
        raise BenchError("taskset is not installed (Debian: util-linux); or pass --no-pin")
    py_spy = find_py_spy() if options.profile else ""
    if py_spy is None:
        raise BenchError(
            "--profile needs py-spy, which is not installed "
            "(pip install py-spy; it is not among the project's dependencies)"
        )
    if options.output is not None:
        options.output.mkdir(parents=True, exist_ok=True)
    runs: list[RunResult] = []
    profile: dict[str, TargetProfile] | None = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(_machine_lock(console))
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ingest-")))
        bench = _Bench(options, workdir, console)
        redis_server = stack.enter_context(pinned_redis(workdir / "redis", options.redis_cpus))
        # The ingest path never touches MongoDB; /health/ready and startup may.
        mongo = stack.enter_context(EmbeddedMongo())
        bench.redis_url, bench.mongo_url = redis_server.url, mongo.url
        bench.redis_pids.append(redis_server.process.pid if redis_server.process else 0)
        if options.ack_replicas:
            _attach_replicas(stack, bench, redis_server.port, workdir)
        for round_no in range(1, options.rounds + 1):
            bench.new_pools(f"r{round_no}")
            order = bench.targets if round_no % 2 else bench.targets[::-1]
            for target in order:
                runs.append(bench.measure(round_no, target))
        if options.profile:
            bench.new_pools("profile")
            profile = {t.name: bench.profile(py_spy, t) for t in (BARE, CANONICAL)}
    return build_report(options, started_at, runs, profile)


def _cpus(value: str | None) -> str | None:
    if value is None or value.strip().lower() in {"", "none"}:
        return None
    if not re.fullmatch(r"\d+([-,]\d+)*", value):
        raise click.BadParameter(f"{value!r} is not a CPU list like 0 or 0-1 or 0,2")
    return value


@click.command("bench-ingest")
@click.option("--duration", "duration_s", default=10, show_default=True, help="Measured s.")
@click.option("--warmup", "warmup_s", default=10, show_default=True, help="Warm-up s per run.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1))
@click.option("--connections", default=100, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1), help="wrk's.")
@click.option(
    "--server-workers", default=1, show_default=True, type=click.IntRange(1), help="uvicorn's."
)
@click.option(
    "--server-cpus",
    default="0",
    show_default=True,
    help="CPU list for uvicorn (taskset -c; 'none' leaves it unpinned).",
)
@click.option(
    "--redis-cpus", default="1", show_default=True, help="CPU list for redis-server (and replicas)."
)
@click.option("--client-cpus", default="1", show_default=True, help="CPU list for wrk.")
@click.option("--no-pin", is_flag=True, help="Run everything unpinned.")
@click.option("--pool", type=click.IntRange(1), help="Signed requests per wrk run.")
@click.option(
    "--profile", is_flag=True, help="Then profile the bare and canonical servers (needs py-spy)."
)
@click.option(
    "--ingest-factory",
    default=FACTORIES["ingest"],
    show_default=True,
    help="uvicorn factory measured against the bare app.",
)
@click.option(
    "--route",
    "routes",
    multiple=True,
    type=click.Choice(ROUTES),
    help="Also measure this adapter's route, with requests its carrier would send "
    "(repeatable; the canonical standard route is always measured).",
)
@ack_replicas_option(
    "Also measure the canonical route with GATEWAY_ACK_REPLICAS=N, N Redis replicas attached "
    "for the whole run."
)
@output_option(None, "Directory for bench_ingest.json and the raw wrk outputs.")
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 1 when the canonical route misses a target of docs/contract.md §6.",
)
def bench_ingest_command(no_pin: bool, strict: bool, **params: Any) -> None:
    """Benchmark the ingest endpoint against a bare Litestar endpoint (docs/contract.md §6).

    Needs wrk (Debian: apt-get install -y wrk) and redis-server on PATH. By
    default the server has CPU 0 to itself and wrk and redis-server share
    CPU 1: each app gets the same one core, and neither the load generator
    nor Redis takes from it (docs/performance.md compares the layouts). Exits
    1 on any non-2xx response; a missed target exits 0 unless --strict.
    --route and --ack-replicas add gateway targets to the same rounds.
    """
    for name in ("server_cpus", "redis_cpus", "client_cpus"):
        params[name] = None if no_pin else _cpus(params[name])
    options = BenchOptions(**{**params, "routes": tuple(params["routes"])})
    output = options.output
    console = Console(width=max(150, Console().width))
    report = bench_ingest(options, Console(stderr=True))
    render(report, console)
    if output is not None:
        path = output / "bench_ingest.json"
        path.write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
        console.print(f"wrote {path}")
    if report.non_2xx:
        console.print(f"[bold red]FAIL: {report.non_2xx} non-2xx responses or socket errors")
        sys.exit(1)
    if strict and not report.passed:
        sys.exit(1)
