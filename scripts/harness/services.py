"""Child processes the gateway's tools start: a private ``redis-server`` and the
embedded MongoDB-wire server.

One implementation serves ``gateway dev``, ``gateway loadtest``,
``gateway chaos`` and the test suite, so the tests exercise the same start,
stop and restart paths operators use.

Every child starts in its own session (:func:`spawn`): a terminal's Ctrl-C goes
to the terminal's whole foreground process group, and a Redis that died of it
before the workers had stopped would leave them retrying a dead connection for
their whole grace period. Only the supervisor gets the Ctrl-C; it stops its
children in order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Self

__all__ = [
    "EmbeddedMongo",
    "RedisServer",
    "ServiceError",
    "ServiceProcess",
    "free_port",
    "spawn",
    "terminate",
    "wait_for_port",
]


class ServiceError(RuntimeError):
    """A child service could not be started or did not become ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def wait_for_port(port: int, *, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_is_open(port, host):
            return
        time.sleep(0.02)
    raise ServiceError(f"nothing listens on {host}:{port} after {timeout_s} s")


def spawn(args: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(args, **options)`` in a new session, out of the terminal's reach."""
    return subprocess.Popen(args, start_new_session=True, **options)


def terminate(process: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM ``process`` and wait for it; SIGKILL it after ``timeout_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ServiceProcess:
    """A service in a child process: :meth:`start` it, :meth:`stop` it with SIGTERM, or use it
    as a context manager."""

    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start the child unless it is running already; return once it listens."""
        if self.process is not None and self.process.poll() is None:
            return self
        return self._start()

    def _start(self) -> Self:
        raise NotImplementedError

    def _launch(self, args: list[str], port: int, timeout_s: float, **options: Any) -> Self:
        """:func:`spawn` ``args`` and wait for ``port``; stop the child if it never listens."""
        self.process = spawn(args, **options)
        try:
            wait_for_port(port, timeout_s=timeout_s)
        except ServiceError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class RedisServer(ServiceProcess):
    """A ``redis-server`` on a private port and directory, stoppable and restartable.

    With ``appendonly=True`` it keeps an AOF (``appendfsync everysec``) in
    ``directory`` so a restart replays what was written, as in production.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        appendonly: bool = False,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = extra_args
        found = binary or shutil.which("redis-server")
        if found is None:
            raise ServiceError("redis-server is not on PATH (Debian: apt-get install redis-server)")
        self.binary = found

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _start(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--logfile", str(self.directory / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        return self._launch(
            args, self.port, 10.0, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        """SIGTERM (Redis flushes its AOF and exits), waiting until the port is closed."""
        super().stop()

    def kill(self) -> None:
        """SIGKILL: no flush, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class EmbeddedMongo(ServiceProcess):
    """mongoeco's in-memory MongoDB-wire server in a child process (non-durable)."""

    def __init__(self, *, port: int | None = None, log: IO[bytes] | None = None) -> None:
        self.port = port or free_port()
        self._log = log

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def _start(self) -> Self:
        return self._launch(
            [sys.executable, "-m", "scripts.harness.embedded_mongo", "--port", str(self.port)],
            self.port,
            30.0,
            stdout=subprocess.DEVNULL,
            stderr=self._log if self._log is not None else subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
