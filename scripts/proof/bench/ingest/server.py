"""The servers ``gateway bench-ingest`` measures: one uvicorn app at a time, and a
pinned redis-server."""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec

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
from shared.settings import decode_secret
from shared.signing import sign

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
