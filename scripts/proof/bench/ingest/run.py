"""``gateway bench-ingest``: the ingest path against a bare Litestar endpoint (docs/contract.md §6).

One run serves two apps, one at a time, with the same uvicorn command line
(:mod:`scripts.proof.bench.apps`): a bare endpoint answering 202, and the real
gateway app with its signature check, validation, logging, metrics and Redis
enqueue. wrk drives each at 100 connections with pre-signed requests, every
one carrying a unique event id, so the real path enqueues every request.

Per round: for each target (the order alternates between rounds) start the
server, flush Redis, warm up, flush Redis, measure, stop the server. The
table reports the median of each target over the rounds, the ratio per round
and the median ratio, against the target: ingest requests/s at least 0.60× the
bare endpoint's, with p99 under 50 ms.

wrk's Lua has no HMAC, so the requests are signed in Python at the start of
each round (well inside the 300 s timestamp tolerance) and written as raw
HTTP requests to one file per wrk thread; the Lua script replays them in
order and counts response statuses.
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
import msgspec
import redis
from rich.console import Console

from scripts.harness.services import EmbeddedMongo
from scripts.proof.bench.ingest.model import (
    POOL_RATE_PER_S,
    QUEUE_NAME,
    SOURCE,
    TARGET_FACTORIES,
    BenchError,
    BenchOptions,
    BenchReport,
    RunResult,
    Target,
    TargetProfile,
    WrkStats,
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
    parse_wrk_output,
    run_wrk,
    write_request_pool,
)
from scripts.proof.options import output_option
from scripts.proof.probes import cpu_seconds, find_py_spy, summarize_collapsed_stacks
from shared.signing import generate_secret

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
        self.secret = generate_secret()
        self.lua = workdir / "bench.lua"
        self.lua.write_text(WRK_LUA)
        self.data_dir = workdir / "requests"
        self.data_dir.mkdir()
        self.pool = options.pool or POOL_RATE_PER_S * max(options.duration_s, options.warmup_s)
        self.redis_url = ""
        self.redis_pid = 0
        self.mongo_url = ""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        sources = {SOURCE: {"secrets": [self.secret], "scheme": "standard"}}
        env.update(
            GATEWAY_REDIS_URL=self.redis_url,
            GATEWAY_MONGO_URL=self.mongo_url,
            GATEWAY_MONGO_DB="gateway_bench",
            GATEWAY_QUEUE_NAME=QUEUE_NAME,
            GATEWAY_SOURCES=msgspec.json.encode(sources).decode(),
            GATEWAY_LOG_LEVEL="INFO",
            GATEWAY_LOG_FORMAT="json",
            # As in the container image: every log line is written as it happens.
            PYTHONUNBUFFERED="1",
        )
        return env

    def sign_pool(self, label: str) -> None:
        started = time.monotonic()
        write_request_pool(
            self.data_dir,
            secret=self.secret,
            count=self.pool,
            files=self.options.threads,
            now=time.time(),
            nonce=f"{label}{secrets.token_hex(4)}",
        )
        self.console.log(f"signed {self.pool:,} requests in {time.monotonic() - started:.1f} s")

    def flush(self) -> None:
        with redis.Redis.from_url(self.redis_url) as client:
            client.flushall()

    def wrk(self, url: str, seconds: int) -> tuple[WrkStats, str, float]:
        """One wrk run of ``seconds`` against ``url`` with this benchmark's pool and CPUs."""
        return run_wrk(
            url, seconds=seconds, options=self.options, lua=self.lua, data_dir=self.data_dir
        )

    def redis_cpu_s(self) -> float:
        return cpu_seconds(self.redis_pid)

    def queued(self) -> int:
        with redis.Redis.from_url(self.redis_url) as client:
            return int(client.zcard(QUEUE_NAME))

    def measure(self, round_no: int, target: Target) -> RunResult:
        factory = self.options.ingest_factory if target == "ingest" else TARGET_FACTORIES["bare"]
        log = self.workdir / f"server-{target}.log"
        with Server(factory, env=self.env(), options=self.options, log=log) as server:
            server.probe(self.secret)
            self.flush()
            if self.options.warmup_s > 0:
                warm, raw, _ = self.wrk(server.url, self.options.warmup_s)
                self._check(target, warm, raw, phase="warm-up")
                self.flush()
            assert server.process is not None
            server_cpu_s, redis_cpu_s = (
                cpu_seconds(server.process.pid, with_descendants=True),
                self.redis_cpu_s(),
            )
            stats, raw, wrk_cpu_s = self.wrk(server.url, self.options.duration_s)
            server_cpu_s = cpu_seconds(server.process.pid, with_descendants=True) - server_cpu_s
            redis_cpu_s = self.redis_cpu_s() - redis_cpu_s
            self._check(target, stats, raw, phase="run")
            enqueued = self.queued()
            if self.options.output is not None:
                (self.options.output / f"wrk-round{round_no}-{target}.txt").write_text(raw)
        enqueues = target == "ingest" and factory != TARGET_FACTORIES["bare"]
        if enqueues and enqueued < stats.status_202:
            raise BenchError(
                f"{stats.status_202} requests answered 202 but only {enqueued} jobs are queued"
            )
        result = RunResult(
            round=round_no,
            target=target,
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
        )
        self.console.log(
            f"round {round_no} {target:6}: {stats.requests_per_s:9,.0f} req/s  "
            f"p50 {stats.p50_ms:6.2f} ms  p99 {stats.p99_ms:6.2f} ms  "
            f"202={stats.status_202:,} 200={stats.status_200:,} other={stats.status_other}  "
            f"queued={enqueued:,}  cpu% server {result.cpu_pct['server']:.0f} "
            f"redis {result.cpu_pct['redis']:.0f} wrk {result.cpu_pct['wrk']:.0f}"
        )
        return result

    def _check(self, target: Target, stats: WrkStats, raw: str, *, phase: str) -> None:
        if stats.pool_wraps:
            raise BenchError(
                f"{target} {phase}: wrk ran out of signed requests ({stats.requests:,} sent, "
                f"pool {self.pool:,}); repeated event ids would be duplicates: raise --pool"
            )
        if stats.status_other or stats.socket_errors:
            self.console.print(raw)
            self.console.log(
                f"[bold red]{target} {phase}: {stats.status_other} non-2xx responses, "
                f"{stats.socket_errors} socket errors"
            )

    def profile(self, py_spy: str, target: Target) -> TargetProfile:
        """Sample ``target``'s server with py-spy during one run of wrk."""
        factory = self.options.ingest_factory if target == "ingest" else TARGET_FACTORIES["bare"]
        log = self.workdir / f"server-profile-{target}.log"
        raw_path = (self.options.output or self.workdir) / f"profile-{target}.txt"
        with Server(factory, env=self.env(), options=self.options, log=log) as server:
            assert server.process is not None
            server.probe(self.secret)
            self.flush()
            if self.options.warmup_s > 0:
                self.wrk(server.url, self.options.warmup_s)
                self.flush()
            # --nonblocking: read the stacks without pausing the server, so the
            # sampled run is barely slower than an unsampled one.
            command = [py_spy, "record", "--pid", str(server.process.pid), "--subprocesses"]
            command += ["--nonblocking", "--rate", "250", "--format", "raw", "--nolineno"]
            command += ["--duration", str(self.options.duration_s), "--output", str(raw_path)]
            cpu_before = cpu_seconds(server.process.pid, with_descendants=True)
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            stats, _, _ = self.wrk(server.url, self.options.duration_s)
            cpu_s = cpu_seconds(server.process.pid, with_descendants=True) - cpu_before
            _, spy_err = spy.communicate(timeout=60)
            if spy.returncode != 0:
                raise BenchError(f"py-spy failed: {spy_err.decode(errors='replace')}")
        summary = summarize_collapsed_stacks(raw_path.read_text().splitlines())
        self.console.log(
            f"profiled {target}: {stats.requests_per_s:,.0f} req/s; stacks in {raw_path}"
        )
        return TargetProfile(
            requests_per_s=stats.requests_per_s,
            server_cpu_pct=round(100 * cpu_s / stats.duration_s, 1),
            us_per_request=round(1e6 * cpu_s / max(1, stats.requests), 1),
            packages=summary["packages"],
            self_time=summary["self"],
            inclusive=summary["inclusive"],
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
        bench.redis_pid = redis_server.process.pid if redis_server.process else 0
        for round_no in range(1, options.rounds + 1):
            bench.sign_pool(f"r{round_no}")
            order: tuple[Target, Target] = (
                ("bare", "ingest") if round_no % 2 else ("ingest", "bare")
            )
            for target in order:
                runs.append(bench.measure(round_no, target))
        if options.profile:
            bench.sign_pool("profile")
            profile = {target: bench.profile(py_spy, target) for target in ("bare", "ingest")}
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
@click.option("--redis-cpus", default="1", show_default=True, help="CPU list for redis-server.")
@click.option("--client-cpus", default="1", show_default=True, help="CPU list for wrk.")
@click.option("--no-pin", is_flag=True, help="Run everything unpinned.")
@click.option("--pool", type=click.IntRange(1), help="Signed requests per wrk run.")
@click.option(
    "--profile", is_flag=True, help="Then profile both servers with py-spy (needs py-spy)."
)
@click.option(
    "--ingest-factory",
    default=TARGET_FACTORIES["ingest"],
    show_default=True,
    help="uvicorn factory measured against the bare app.",
)
@output_option(None, "Directory for bench_ingest.json and the raw wrk outputs.")
@click.option("--strict", is_flag=True, help="Exit 1 when the target is missed.")
def bench_ingest_command(no_pin: bool, strict: bool, **params: Any) -> None:
    """Benchmark the ingest endpoint against a bare Litestar endpoint (docs/contract.md §6).

    Needs wrk (Debian: apt-get install -y wrk) and redis-server on PATH. By
    default the server has CPU 0 to itself and wrk and redis-server share
    CPU 1: each app gets the same one core, and neither the load generator
    nor Redis takes from it (docs/performance.md compares the layouts). Exits
    1 on any non-2xx response; a missed target exits 0 unless --strict.
    """
    for name in ("server_cpus", "redis_cpus", "client_cpus"):
        params[name] = None if no_pin else _cpus(params[name])
    options = BenchOptions(**params)
    output = options.output
    console = Console(width=max(120, Console().width))
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
