"""``gateway bench-ingest``: the ingest path against a bare Litestar endpoint (SPEC §6).

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
import platform
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import click
import httpx
import msgspec
import redis
from rich.console import Console
from rich.table import Table

from scripts.harness.services import (
    EmbeddedMongo,
    RedisServer,
    ServiceError,
    free_port,
    wait_for_port,
)
from shared.settings import decode_secret
from shared.signing import generate_secret, sign

__all__ = [
    "BenchOptions",
    "BenchReport",
    "RunResult",
    "bench_ingest",
    "bench_ingest_command",
    "parse_wrk_output",
    "summarize_collapsed_stacks",
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

# Each wrk thread replays its own file of NUL-separated raw HTTP requests, so no
# two connections send the same event id. Globals (not locals) are what
# thread:get() can read back in done().
WRK_LUA = r"""
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  requests_ = {}
  count = 0
  index = 0
  wraps = 0
  s202 = 0
  s200 = 0
  s2xx = 0
  other = 0
  local f = assert(io.open(args[1] .. "/requests." .. id .. ".bin", "rb"))
  local data = f:read("*a")
  f:close()
  local pos = 1
  while true do
    local stop = string.find(data, "\0", pos, true)
    if not stop then break end
    count = count + 1
    requests_[count] = string.sub(data, pos, stop - 1)
    pos = stop + 1
  end
  assert(count > 0, "no requests in the data file")
end

function request()
  index = index + 1
  if index > count then
    index = 1
    wraps = wraps + 1
  end
  return requests_[index]
end

function response(status, headers, body)
  if status == 202 then
    s202 = s202 + 1
  elseif status == 200 then
    s200 = s200 + 1
  elseif status >= 200 and status < 300 then
    s2xx = s2xx + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local t = {s202 = 0, s200 = 0, s2xx = 0, other = 0, wraps = 0}
  for _, thread in ipairs(threads) do
    for key, _ in pairs(t) do
      t[key] = t[key] + thread:get(key)
    end
  end
  io.write(string.format("__MARKER__ %d %d %d %d %d\n", t.s202, t.s200, t.s2xx, t.other, t.wraps))
end
""".replace("__MARKER__", STATUS_MARKER)


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


# ---------------------------------------------------------------- requests


def write_request_pool(
    directory: Path, *, secret: str, count: int, files: int, now: float, nonce: str
) -> None:
    """Sign ``count`` unique events at ``now`` into ``files`` NUL-separated request files."""
    key = decode_secret(secret)
    timestamp = int(now)
    occurred_at = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    encoder = msgspec.json.Encoder()
    handles = [(directory / f"requests.{n}.bin").open("wb") for n in range(files)]
    try:
        for index in range(count):
            event_id = f"evt_{nonce}_{index}"
            body = encoder.encode(
                {
                    "event_id": event_id,
                    "event_type": "shipment.in_transit",
                    "occurred_at": occurred_at,
                    "shipment": {
                        "id": f"shp_{index % 5000}",
                        "order_id": f"ord_{index % 5000}",
                        "tracking_number": f"1Z{index:010d}",
                    },
                    "location": {"lat": 52.52, "lon": 13.405},
                }
            )
            head = (
                f"POST /v1/events/{SOURCE} HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"webhook-id: {event_id}\r\n"
                f"webhook-timestamp: {timestamp}\r\n"
                f"webhook-signature: {sign(key, event_id, timestamp, body)}\r\n"
                "\r\n"
            )
            handle = handles[index % files]
            handle.write(head.encode())
            handle.write(body)
            handle.write(b"\0")
    finally:
        for handle in handles:
            handle.close()


# ---------------------------------------------------------------- wrk

_LATENCY_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(value: str, unit: str) -> float:
    return float(value) * _LATENCY_UNITS_MS[unit]


def parse_wrk_output(text: str) -> WrkStats:
    """Requests/s, p50/p99 (from ``--latency``), errors and our status counts from wrk's output."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, flags=re.MULTILINE)
        if match is None:
            raise BenchError(f"wrk output has no line matching {pattern!r}:\n{text}")
        return match

    percentiles = {
        int(m.group(1)): _latency_ms(m.group(2), m.group(3))
        for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", text, flags=re.MULTILINE)
    }
    if 50 not in percentiles or 99 not in percentiles:
        raise BenchError(f"wrk output has no latency distribution (run with --latency):\n{text}")
    totals = find(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m)")
    duration_s = (
        float(totals.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[totals.group(3)]
    )
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    status = find(rf"^{STATUS_MARKER} (\d+) (\d+) (\d+) (\d+) (\d+)$")
    return WrkStats(
        requests=int(totals.group(1)),
        duration_s=duration_s,
        requests_per_s=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        status_202=int(status.group(1)),
        status_200=int(status.group(2)),
        status_other_2xx=int(status.group(3)),
        status_other=int(status.group(4)),
        pool_wraps=int(status.group(5)),
    )


def _taskset(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (Linux ``/proc``)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            # After "pid (comm)": state ppid ... utime (12th) stime (13th).
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _) in stats.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(stats[p][1] for p in tree if p in stats) / _CLOCK_TICKS_PER_S


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    url: str, *, seconds: int, options: BenchOptions, lua: Path, data_dir: Path
) -> tuple[WrkStats, str, float]:
    """One wrk run against ``url``: the parsed stats, wrk's raw output and wrk's CPU seconds."""
    command = [
        *_taskset(options.client_cpus),
        "wrk",
        f"--threads={options.threads}",
        f"--connections={options.connections}",
        f"--duration={seconds}s",
        "--timeout=5s",
        "--latency",
        f"--script={lua}",
        url,
        "--",
        str(data_dir),
    ]
    cpu_before = _children_cpu_s()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    cpu_s = _children_cpu_s() - cpu_before
    if result.returncode != 0:
        raise BenchError(f"wrk exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return parse_wrk_output(result.stdout), result.stdout, cpu_s


# ---------------------------------------------------------------- servers


class Server:
    """One uvicorn process serving ``factory`` on a free loopback port."""

    def __init__(
        self, factory: str, *, env: dict[str, str], options: BenchOptions, log: Path
    ) -> None:
        self.factory = factory
        self.port = free_port()
        self.env = env
        self.options = options
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/events/{SOURCE}"

    def command(self) -> list[str]:
        """Identical for both targets but for the factory."""
        return [
            *_taskset(self.options.server_cpus),
            sys.executable, "-m", "uvicorn", "--factory", self.factory,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.options.server_workers),
            "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--no-server-header", "--log-level", "warning",
        ]  # fmt: skip

    def __enter__(self) -> Server:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        try:
            wait_for_port(self.port, timeout_s=60)
        except ServiceError as exc:
            self.__exit__()
            raise BenchError(f"{self.factory} did not start: {self._log_tail()}") from exc
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _log_tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-20:])

    def probe(self, secret: str) -> None:
        """One signed request must be accepted before wrk starts."""
        body = msgspec.json.encode(
            {
                "event_id": f"evt_probe_{secrets.token_hex(8)}",
                "event_type": "shipment.created",
                "occurred_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "shipment": {"id": "shp_probe", "order_id": "ord_probe"},
            }
        )
        msg_id = f"msg_probe_{secrets.token_hex(8)}"
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(decode_secret(secret), msg_id, timestamp, body),
        }
        response = httpx.post(self.url, content=body, headers=headers, timeout=10)
        if response.status_code != 202:
            raise BenchError(
                f"{self.factory} answered the probe with {response.status_code}: "
                f"{response.text[:500]}\n{self._log_tail()}"
            )


@contextlib.contextmanager
def _pinned_redis(directory: Path, cpus: str | None) -> Iterator[RedisServer]:
    # AOF on, as in production (docker-compose.yml): its write path is part of an enqueue.
    with RedisServer(directory, appendonly=True) as server:
        if cpus and server.process is not None:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", cpus, str(server.process.pid)],
                check=True,
                capture_output=True,
            )
        yield server


# ---------------------------------------------------------------- profile


# Frames every sample of the main thread passes through: 100% inclusive, no information.
_LAUNCHER_FRAME = re.compile(
    r"\((<frozen runpy>|click/core\.py|uvicorn/main\.py|uvicorn/__main__\.py"
    r"|uvicorn/server\.py|asyncio/runners\.py)\)$"
)


def summarize_collapsed_stacks(
    lines: Sequence[str], *, top: int = 15
) -> dict[str, list[tuple[str, float]]]:
    """Top frames by self and inclusive share, and self share by package, of py-spy raw output.

    Each line is ``frame;frame;...;leaf count`` (``--format raw``); shares are
    percentages of all samples.
    """
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, raw_count = line.rstrip().rpartition(" ")
        if not stack or not raw_count.isdigit():
            continue
        count = int(raw_count)
        # --subprocesses roots every stack in a "process <pid>:<command>" pseudo-frame.
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        packages[_package_of(frames[-1])] += count
        for frame in set(frames):
            if not _LAUNCHER_FRAME.search(frame):
                inclusive[frame] += count
    if total == 0:
        return {"self": [], "inclusive": [], "packages": []}

    def share(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(limit)]

    return {
        "self": share(self_time, top),
        "inclusive": share(inclusive, top * 2),
        "packages": share(packages, top),
    }


def _package_of(frame: str) -> str:
    """``handle (litestar/routes/http.py)`` -> ``litestar``; ``digest (hmac.py)`` -> ``hmac``.

    py-spy shortens paths to the module path below ``sys.path``, so the first
    component names the package (a standard-library module names itself).
    """
    match = re.search(r"\(([^)]*)\)$", frame)
    if match is None:
        return frame
    path = match.group(1).split(":")[0]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith("/"):
        return Path(path).stem
    return path.split("/", 1)[0].removesuffix(".py")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


# ---------------------------------------------------------------- the run


def _machine() -> dict[str, str | int]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        found = re.search(r"^Model name:\s+(.+)$", lscpu, flags=re.MULTILINE)
        if found:
            model = found.group(1).strip()
    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


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

    def redis_cpu_s(self) -> float:
        return process_cpu_s(self.redis_pid) if self.redis_pid else 0.0

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
                warm, raw, _ = run_wrk(
                    server.url,
                    seconds=self.options.warmup_s,
                    options=self.options,
                    lua=self.lua,
                    data_dir=self.data_dir,
                )
                self._check(target, warm, raw, phase="warm-up")
                self.flush()
            assert server.process is not None
            server_cpu_s, redis_cpu_s = process_cpu_s(server.process.pid), self.redis_cpu_s()
            stats, raw, wrk_cpu_s = run_wrk(
                server.url,
                seconds=self.options.duration_s,
                options=self.options,
                lua=self.lua,
                data_dir=self.data_dir,
            )
            server_cpu_s = process_cpu_s(server.process.pid) - server_cpu_s
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
                run_wrk(
                    server.url,
                    seconds=self.options.warmup_s,
                    options=self.options,
                    lua=self.lua,
                    data_dir=self.data_dir,
                )
                self.flush()
            # --nonblocking: read the stacks without pausing the server, so the
            # sampled run is barely slower than an unsampled one.
            command = [py_spy, "record", "--pid", str(server.process.pid), "--subprocesses"]
            command += ["--nonblocking", "--rate", "250", "--format", "raw", "--nolineno"]
            command += ["--duration", str(self.options.duration_s), "--output", str(raw_path)]
            cpu_before = process_cpu_s(server.process.pid)
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            stats, _, _ = run_wrk(
                server.url,
                seconds=self.options.duration_s,
                options=self.options,
                lua=self.lua,
                data_dir=self.data_dir,
            )
            cpu_s = process_cpu_s(server.process.pid) - cpu_before
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
        redis_server = stack.enter_context(_pinned_redis(workdir / "redis", options.redis_cpus))
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
    return _report(options, started_at, runs, profile)


def _report(
    options: BenchOptions,
    started_at: str,
    runs: list[RunResult],
    profile: dict[str, TargetProfile] | None,
) -> BenchReport:
    by_round: dict[int, dict[Target, RunResult]] = {}
    for run in runs:
        by_round.setdefault(run.round, {})[run.target] = run
    ratios = [
        round(pair["ingest"].wrk.requests_per_s / pair["bare"].wrk.requests_per_s, 3)
        for _, pair in sorted(by_round.items())
    ]
    median: dict[str, TargetSummary] = {}
    for target in ("bare", "ingest"):
        mine = [r.wrk for r in runs if r.target == target]
        median[target] = TargetSummary(
            requests_per_s=round(_median([w.requests_per_s for w in mine]), 1),
            p50_ms=round(_median([w.p50_ms for w in mine]), 2),
            p99_ms=round(_median([w.p99_ms for w in mine]), 2),
        )
    median_ratio = round(_median(ratios), 3)
    return BenchReport(
        started_at=started_at,
        machine=_machine(),
        options={
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "rounds": options.rounds,
            "connections": options.connections,
            "threads": options.threads,
            "server_workers": options.server_workers,
            "server_cpus": options.server_cpus,
            "redis_cpus": options.redis_cpus,
            "client_cpus": options.client_cpus,
            "ingest_factory": options.ingest_factory,
            "profile": options.profile,
        },
        runs=runs,
        ratios=ratios,
        median=median,
        median_ratio=median_ratio,
        passed=median_ratio >= TARGET_RATIO and median["ingest"].p99_ms < TARGET_P99_MS,
        non_2xx=sum(r.non_2xx for r in runs),
        disturbed_rounds=sorted({r.round for r in runs if r.disturbed}),
        profile=profile,
    )


def render(report: BenchReport, console: Console) -> None:
    """The results table, the verdict and (with --profile) the top frames."""
    table = Table(title="ingest vs bare Litestar endpoint (requests/s, latency in ms)")
    columns = ("round", "target", "req/s", "p50", "p99", "2xx", "non-2xx", "queued", "ratio")
    for column in (*columns, "cpu% server/redis/wrk"):
        table.add_column(column, justify="right")
    ratios = dict(enumerate(report.ratios, start=1))
    for run in report.runs:
        is_ingest = run.target == "ingest"
        table.add_row(
            str(run.round),
            run.target,
            f"{run.wrk.requests_per_s:,.0f}",
            f"{run.wrk.p50_ms:.2f}",
            f"{run.wrk.p99_ms:.2f}",
            f"{run.wrk.status_202 + run.wrk.status_200 + run.wrk.status_other_2xx:,}",
            str(run.non_2xx),
            f"{run.enqueued:,}",
            f"{ratios[run.round]:.3f}" if is_ingest else "",
            "/".join(f"{run.cpu_pct[name]:.0f}" for name in ("server", "redis", "wrk"))
            + (" !" if run.disturbed else ""),
        )
    for target, summary in report.median.items():
        table.add_row(
            "median",
            target,
            f"{summary.requests_per_s:,.0f}",
            f"{summary.p50_ms:.2f}",
            f"{summary.p99_ms:.2f}",
            "",
            "",
            "",
            f"{report.median_ratio:.3f}" if target == "ingest" else "",
            "",
            style="bold",
        )
    console.print(table)
    for run in report.runs:
        if run.disturbed:
            console.print(
                f"[bold yellow]warning: round {run.round} {run.target} is disturbed: its server "
                f"got {run.cpu_pct['server']:.0f}% of its core (other load on the machine); "
                "rerun on a quiet machine"
            )
    verdict = "PASS" if report.passed else "MISS"
    console.print(
        f"{verdict}: ingest {report.median_ratio:.3f}× the bare endpoint (target ≥ "
        f"{TARGET_RATIO:.2f}×), ingest p99 {report.median['ingest'].p99_ms:.2f} ms "
        f"(target < {TARGET_P99_MS:.0f} ms)"
    )
    if report.profile:
        _render_profile(report.profile, console)


def _render_profile(profile: dict[str, TargetProfile], console: Console) -> None:
    bare, ingest = profile["bare"], profile["ingest"]
    console.print(
        f"server CPU per request: bare {bare.us_per_request:.0f} µs, ingest "
        f"{ingest.us_per_request:.0f} µs (profiled runs: {bare.requests_per_s:,.0f} and "
        f"{ingest.requests_per_s:,.0f} req/s)"
    )
    by_package = Table(title="self CPU by package, µs per request (py-spy samples)")
    for column in ("package", "bare", "ingest", "ingest − bare"):
        by_package.add_column(column, justify="left" if column == "package" else "right")
    bare_us = {name: pct * bare.us_per_request / 100 for name, pct in bare.packages}
    ingest_us = {name: pct * ingest.us_per_request / 100 for name, pct in ingest.packages}
    for name in sorted(set(bare_us) | set(ingest_us), key=lambda n: -ingest_us.get(n, 0)):
        b, i = bare_us.get(name, 0.0), ingest_us.get(name, 0.0)
        if max(b, i) >= 0.5:
            by_package.add_row(name, f"{b:.1f}", f"{i:.1f}", f"{i - b:+.1f}")
    b, i = bare.us_per_request, ingest.us_per_request
    by_package.add_row("all (server CPU)", f"{b:.1f}", f"{i:.1f}", f"{i - b:+.1f}", style="bold")
    console.print(by_package)
    for title, frames in (
        ("self time", ingest.self_time),
        ("inclusive time", ingest.inclusive),
    ):
        table = Table(title=f"ingest server, top frames by {title}")
        table.add_column("%", justify="right")
        table.add_column("µs/req", justify="right")
        table.add_column("frame")
        for name, pct in frames:
            table.add_row(f"{pct:.1f}", f"{pct * ingest.us_per_request / 100:.1f}", name)
        console.print(table)


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
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for bench_ingest.json and the raw wrk outputs.",
)
@click.option("--strict", is_flag=True, help="Exit 1 when the target is missed.")
def bench_ingest_command(
    duration_s: int,
    warmup_s: int,
    rounds: int,
    connections: int,
    threads: int,
    server_workers: int,
    server_cpus: str,
    redis_cpus: str,
    client_cpus: str,
    no_pin: bool,
    pool: int | None,
    profile: bool,
    ingest_factory: str,
    output: Path | None,
    strict: bool,
) -> None:
    """Benchmark the ingest endpoint against a bare Litestar endpoint (SPEC §6).

    Needs wrk (Debian: apt-get install -y wrk) and redis-server on PATH. By
    default the server has CPU 0 to itself and wrk and redis-server share
    CPU 1: each app gets the same one core, and neither the load generator
    nor Redis takes from it (docs/performance.md compares the layouts). Exits
    1 on any non-2xx response; a missed target exits 0 unless --strict.
    """
    options = BenchOptions(
        duration_s=duration_s,
        warmup_s=warmup_s,
        rounds=rounds,
        connections=connections,
        threads=threads,
        server_workers=server_workers,
        server_cpus=None if no_pin else _cpus(server_cpus),
        redis_cpus=None if no_pin else _cpus(redis_cpus),
        client_cpus=None if no_pin else _cpus(client_cpus),
        pool=pool,
        profile=profile,
        ingest_factory=ingest_factory,
        output=output,
    )
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
