"""The whole gateway on one machine, as child processes: what ``gateway dev``,
``gateway loadtest`` and ``gateway chaos`` run.

Redis comes from ``redis-server`` on PATH unless a URL is given; MongoDB is the
given URL or the embedded, non-durable MongoDB-wire server. The API and every
worker are ``gateway api`` / ``gateway worker`` processes configured only
through ``GATEWAY_*`` variables, exactly as containers run them.

Children run in their own sessions so a terminal's Ctrl-C reaches only this
supervisor, which then stops them in order: API first (no new intake), then
workers (running jobs finish within their grace period), then the mock
downstream, MongoDB and Redis. On Linux each child also gets SIGTERM if the
supervisor itself dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import click
import httpx

from scripts.harness.sentinel import SentinelTopology
from scripts.harness.services import (
    EmbeddedMongo,
    RedisServer,
    ServiceError,
    free_port,
    spawn,
    wait_for_port,
)
from scripts.harness.tcp_proxy import TcpProxyProcess
from scripts.traffic.carriers import CANONICAL_SOURCE, traffic_sources
from shared.signing import generate_secret

__all__ = ["Child", "Stack", "StackOptions"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised child process."""

    name: str
    args: list[str]
    env: dict[str, str]
    stdout: IO[bytes] | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        self.process = spawn(
            self.args,
            env=self.env,
            stdout=self.stdout,
            stderr=subprocess.STDOUT if self.stdout is not None else None,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signum)

    def wait(self, timeout_s: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if not self.alive():
            return
        self.signal(signal.SIGTERM)
        if self.wait(timeout_s) is None:
            self.signal(signal.SIGKILL)
            self.wait(10)


redis_topology_option = click.option(
    "--redis-topology",
    type=click.Choice(["single", "sentinel"], case_sensitive=False),
    default="single",
    show_default=True,
    help="sentinel: a primary, a replica and three Sentinels on loopback.",
)
"""The ``--redis-topology`` option of ``gateway dev`` and ``gateway chaos``."""


@dataclass
class StackOptions:
    """What to run. ``None`` URLs mean "start our own"."""

    port: int = 8000
    workers: int = 2
    redis_url: str | None = None
    mongo_url: str | None = None
    mongo_db: str = "gateway"
    redis_appendonly: bool = False
    redis_args: tuple[str, ...] = ()
    """Extra ``redis-server`` arguments (e.g. ``("--appendfsync", "always")``)."""
    redis_topology: Literal["single", "sentinel"] = "single"
    """``sentinel``: a primary, a replica and three Sentinels (scripts/harness/sentinel.py)."""
    mongo_proxy: bool = False
    """Reach MongoDB through a TCP proxy (``Stack.mongo_proxy``) that a harness can cut."""
    mock_downstream: bool = False
    mock_args: list[str] = field(default_factory=list)
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra GATEWAY_* variables for the API and workers (e.g. backoff settings)."""
    log_dir: Path | None = None
    """Write each child's output to ``<log_dir>/<name>.log`` instead of inheriting stdout."""
    workdir: Path | None = None
    ready_timeout_s: float = 60.0
    shutdown_grace_s: float = 20.0


class ProofRun(Protocol):
    """What a proof run's options (``gateway loadtest``, ``gateway chaos``) say of its stack."""

    @property
    def port(self) -> int | None: ...
    @property
    def workers(self) -> int: ...
    @property
    def mongo_url(self) -> str | None: ...
    @property
    def mongo_db(self) -> str: ...
    @property
    def output(self) -> Path: ...


def proof_stack(run: ProofRun, **options: Any) -> Stack:
    """The stack a proof run starts: its API port (a free one if unset), workers and MongoDB,
    with the mock downstream and each child's log in ``<output>/logs``; ``options`` are the
    rest of its :class:`StackOptions`."""
    return Stack(
        StackOptions(
            port=run.port or free_port(),
            workers=run.workers,
            mongo_url=run.mongo_url,
            mongo_db=run.mongo_db,
            mock_downstream=True,
            log_dir=run.output / "logs",
            **options,
        )
    )


class Stack:
    """Start, supervise and stop the gateway's processes."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self._own_workdir = options.workdir is None
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="gateway-stack-"))
        self.redis: RedisServer | None = None
        self.sentinel: SentinelTopology | None = None
        self.mongo: EmbeddedMongo | None = None
        self.redis_url = options.redis_url or ""
        self.mongo_url = options.mongo_url or ""
        """What the API and workers use (the proxy's URL when ``mongo_proxy`` is on)."""
        self.mongo_direct_url = self.mongo_url
        """MongoDB itself, bypassing the proxy (for checks made from outside)."""
        self.mongo_proxy: TcpProxyProcess | None = None
        self.sources_file = self.workdir / "sources.json"
        self.env_file = self.workdir / "stack.env"
        self.generated_source: str | None = None
        self.generated_admin_token: str | None = None
        self.downstream_url: str | None = None
        self._downstream_secret = ""
        self.mock: Child | None = None
        self.api: Child | None = None
        self.workers: list[Child] = []
        self.worker_metrics_ports: list[int] = []
        self._logs: list[IO[bytes]] = []

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.options.port}"

    @property
    def mongo_is_embedded(self) -> bool:
        return self.mongo is not None

    def start(self) -> None:
        """Start everything and wait until the API is ready; stop what started on failure."""
        try:
            self._start_storage()
            self._write_sources()
            if self.options.mock_downstream:
                self._start_mock()
            self._run_init_db()
            self._start_api()
            for index in range(self.options.workers):
                self.workers.append(self._start_worker(index))
            self._wait_ready()
            self.write_env_file()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop children in dependency order; safe to call twice."""
        grace = self.options.shutdown_grace_s + 5
        if self.api is not None:
            self.api.stop(15)
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        for worker in self.workers:
            if worker.wait(grace) is None:
                worker.stop(1)
        if self.mock is not None:
            self.mock.stop(10)
        if self.mongo_proxy is not None:
            self.mongo_proxy.stop()
        if self.mongo is not None:
            self.mongo.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.sentinel is not None:
            self.sentinel.stop()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._own_workdir:
            for path in sorted(self.workdir.rglob("*"), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir() if path.is_dir() else path.unlink()
            with contextlib.suppress(OSError):
                self.workdir.rmdir()

    def children(self) -> list[Child]:
        found = [c for c in (self.api, self.mock) if c is not None]
        return found + self.workers

    def pids(self) -> list[int]:
        """Every process this stack started (children and services) that is still known."""
        pids = [c.pid for c in self.children() if c.pid is not None]
        ha = () if self.sentinel is None else self.sentinel.processes()
        for service in (self.redis, self.mongo, self.mongo_proxy, *ha):
            if service is not None and service.process is not None:
                pids.append(service.process.pid)
        return pids

    def ports(self) -> list[int]:
        """Every port this stack listens on."""
        ports = [self.options.port, *self.worker_metrics_ports]
        if self.redis is not None:
            ports.append(self.redis.port)
        if self.sentinel is not None:
            ports.extend(p.port for p in self.sentinel.processes())
        if self.mongo is not None:
            ports.append(self.mongo.port)
        if self.mongo_proxy is not None:
            ports.append(self.mongo_proxy.port)
        if self.mock_port is not None:
            ports.append(self.mock_port)
        return ports

    # ---- supervision helpers used by dev and chaos -----------------------------------------

    def restart_worker(self, index: int) -> Child:
        """Replace worker ``index`` (after it exited or was killed) with a fresh process."""
        old = self.workers[index]
        old.stop(1)
        worker = self._start_worker(index, port=self.worker_metrics_ports[index])
        worker.restarts = old.restarts + 1
        self.workers[index] = worker
        return worker

    def check_children(self) -> list[Child]:
        """Children that exited since they were started."""
        return [c for c in self.children() if c.process is not None and not c.alive()]

    # ---- internals -------------------------------------------------------------------------

    def _start_storage(self) -> None:
        if not self.redis_url:
            # One redis-server, or a primary, a replica and three Sentinels: started alike.
            sentinel = self.options.redis_topology == "sentinel"
            kind: type[SentinelTopology] | type[RedisServer] = (
                SentinelTopology if sentinel else RedisServer
            )
            redis = kind(
                self.workdir / ("redis-ha" if sentinel else "redis"),
                appendonly=self.options.redis_appendonly,
                extra_args=self.options.redis_args,
            ).start()
            self.redis_url = redis.url
            if isinstance(redis, SentinelTopology):
                self.sentinel = redis
            else:
                self.redis = redis
        if not self.mongo_url:
            self.mongo = EmbeddedMongo(log=self._log("mongo")).start()
            self.mongo_url = self.mongo.url
        self.mongo_direct_url = self.mongo_url
        if self.options.mongo_proxy:
            host, port = _mongo_address(self.mongo_url)
            self.mongo_proxy = TcpProxyProcess(
                port, target_host=host, log=self._log("mongo-proxy")
            ).start()
            self.mongo_url = _via_proxy(self.mongo_url, self.mongo_proxy.port)

    def _write_sources(self) -> None:
        env = {**os.environ, **self.options.env}
        if not env.get("GATEWAY_ADMIN_TOKEN"):
            self.generated_admin_token = secrets.token_urlsafe(24)
        if env.get("GATEWAY_SOURCES") or env.get("GATEWAY_SOURCES_FILE"):
            return
        # The canonical source first, then one per simulated carrier (docs/carriers.md).
        self.generated_source = CANONICAL_SOURCE
        self.sources_file.touch(mode=0o600)
        self.sources_file.write_text(json.dumps(traffic_sources()))

    def write_env_file(self) -> Path:
        """``stack.env``: the variables other commands need to talk to this stack.

        Source it (``set -a; . stack.env; set +a``) before ``gateway demo`` or
        ``gateway dlq``. Mode 0600: it may name a generated admin token.
        """
        env = self._base_env()
        names = [
            "GATEWAY_REDIS_URL", "GATEWAY_MONGO_URL", "GATEWAY_MONGO_DB", "GATEWAY_QUEUE_NAME",
            "GATEWAY_PORT", "GATEWAY_SOURCES_FILE", "GATEWAY_ADMIN_TOKEN",
        ]  # fmt: skip
        lines = [f"{name}={shlex.quote(env[name])}" for name in names if env.get(name)]
        if self.mock_url:
            lines.append(f"GATEWAY_MOCK_DOWNSTREAM_URL={shlex.quote(self.mock_url)}")
        self.env_file.touch(mode=0o600)
        self.env_file.write_text("\n".join(lines) + "\n")
        return self.env_file

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "GATEWAY_REDIS_URL": self.redis_url,
                **(
                    {}
                    if self.sentinel is None
                    else {"GATEWAY_REDIS_SENTINELS": self.sentinel.sentinels_env}
                ),
                "GATEWAY_MONGO_URL": self.mongo_url,
                "GATEWAY_MONGO_DB": self.options.mongo_db,
                "GATEWAY_PORT": str(self.options.port),
                "GATEWAY_SHUTDOWN_GRACE_S": str(self.options.shutdown_grace_s),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.generated_source is not None:
            env.pop("GATEWAY_SOURCES", None)
            env["GATEWAY_SOURCES_FILE"] = str(self.sources_file)
        if self.generated_admin_token is not None:
            env["GATEWAY_ADMIN_TOKEN"] = self.generated_admin_token
        if self.downstream_url is not None:
            env["GATEWAY_DOWNSTREAM_URL"] = self.downstream_url
            env["GATEWAY_DOWNSTREAM_SECRET"] = self._downstream_secret
        env.update(self.options.env)
        return env

    def _log(self, name: str) -> IO[bytes] | None:
        if self.options.log_dir is None:
            return None
        self.options.log_dir.mkdir(parents=True, exist_ok=True)
        handle = (self.options.log_dir / f"{name}.log").open("ab")
        self._logs.append(handle)
        return handle

    def _gateway(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "scripts.commands.cli", *args]

    def _start_mock(self) -> None:
        port = free_port()
        self._downstream_secret = generate_secret()
        self.downstream_url = f"http://127.0.0.1:{port}/webhooks"
        env = self._base_env()
        # The mock verifies every delivery's signature (401 when wrong); via the
        # environment, not argv, which `ps` shows.
        env["MOCK_DOWNSTREAM_SECRET"] = self._downstream_secret
        self.mock = Child(
            "mock-downstream",
            self._gateway("mock-downstream", "--port", str(port), *self.options.mock_args),
            env,
            self._log("mock-downstream"),
        )
        self.mock.start()
        wait_for_port(port, timeout_s=30)

    @property
    def mock_url(self) -> str | None:
        """Base URL of the mock downstream's control endpoints."""
        return self.downstream_url.rsplit("/", 1)[0] if self.downstream_url else None

    @property
    def mock_port(self) -> int | None:
        return int(self.downstream_url.split(":")[2].split("/")[0]) if self.downstream_url else None

    def _run_init_db(self) -> None:
        result = subprocess.run(
            self._gateway("init-db"),
            env=self._base_env(),
            stdout=self._log("init-db"),
            stderr=subprocess.STDOUT if self.options.log_dir else None,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"gateway init-db exited {result.returncode}")

    def _start_api(self) -> None:
        self.api = Child("api", self._gateway("api"), self._base_env(), self._log("api"))
        self.api.start()

    def _start_worker(self, index: int, port: int | None = None) -> Child:
        if port is None:
            port = free_port()
            self.worker_metrics_ports.append(port)
        env = self._base_env()
        env["GATEWAY_WORKER_METRICS_PORT"] = str(port)
        env["GATEWAY_WORKER_ID"] = f"{os.uname().nodename}-w{index + 1}"
        worker = Child(
            f"worker-{index + 1}", self._gateway("worker"), env, self._log(f"worker-{index + 1}")
        )
        worker.start()
        return worker

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.ready_timeout_s
        last = "no answer"
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                exited = self.check_children()
                if exited:
                    names = ", ".join(
                        f"{c.name} (exit {c.process.returncode if c.process else '?'})"
                        for c in exited
                    )
                    raise ServiceError(f"exited during start: {names}")
                try:
                    response = client.get(f"{self.api_url}/health/ready")
                    if response.status_code == 200:
                        wait_for_port(
                            self.worker_metrics_ports[-1]
                            if self.worker_metrics_ports
                            else self.options.port
                        )
                        return
                    last = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                time.sleep(0.2)
        raise ServiceError(f"API not ready after {self.options.ready_timeout_s} s: {last}")


def _mongo_address(url: str) -> tuple[str, int]:
    """Host and port of a single-host ``mongodb://`` URL (what a proxy can stand in front of)."""
    parts = urlsplit(url)
    if parts.scheme != "mongodb" or "," in parts.netloc or parts.hostname is None:
        raise ServiceError("a MongoDB proxy needs a single-host mongodb:// URL")
    return parts.hostname, parts.port or 27017


def _via_proxy(url: str, port: int) -> str:
    """``url`` pointed at 127.0.0.1:``port``, credentials and options kept, direct connection."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    query = [(k, v) for k, v in parse_qsl(parts.query) if k.lower() != "directconnection"]
    query.append(("directConnection", "true"))
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))
