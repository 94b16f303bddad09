"""The servers ``gateway bench-ingest`` measures: one uvicorn app at a time, and a
pinned redis-server."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from scripts.harness.services import (
    RedisServer,
    ServiceError,
    free_port,
    wait_for_port,
)
from scripts.proof.bench.ingest.model import (
    SOURCE,
    BenchError,
    BenchOptions,
)
from scripts.proof.bench.ingest.wrk import taskset

__all__ = [
    "Server",
    "pinned_redis",
]

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
            *taskset(self.options.server_cpus),
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


@contextlib.contextmanager
def pinned_redis(directory: Path, cpus: str | None) -> Iterator[RedisServer]:
    # AOF on, as in production (docker-compose.yml): its write path is part of an enqueue.
    with RedisServer(directory, appendonly=True) as server:
        if cpus and server.process is not None:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", cpus, str(server.process.pid)],
                check=True,
                capture_output=True,
            )
        yield server
