"""A Redis primary, one replica and three Sentinels on loopback (docs/contract.md §4.5).

``gateway dev --redis-topology sentinel``, ``gateway chaos --redis-topology
sentinel`` and the HA tests use it. Every process is a Debian
``redis-server`` (Sentinels run as ``redis-server <conf> --sentinel``) in its
own session, like the other harness children (:func:`~scripts.harness.services.spawn`).

Sentinel timeouts are tuned for loopback, where a missed ping means a dead
process, not a congested network: ``down-after-milliseconds`` 1000 and
``failover-timeout`` 5000 (defaults 30 000 and 180 000), so a SIGKILLed primary
is replaced within a few seconds. Production values belong to the network the
Sentinels watch (docs/scaling.md).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Self

import redis

from scripts.harness.services import RedisServer, ServiceError, ServiceProcess, free_port

__all__ = [
    "DOWN_AFTER_MS",
    "FAILOVER_TIMEOUT_MS",
    "MASTER_NAME",
    "SentinelServer",
    "SentinelTopology",
]

MASTER_NAME: Final = "mymaster"
DOWN_AFTER_MS: Final = 1000
FAILOVER_TIMEOUT_MS: Final = 5000
QUORUM: Final = 2


class SentinelServer(ServiceProcess):
    """One ``redis-server --sentinel`` monitoring ``MASTER_NAME`` at ``primary_port``.

    Its configuration file is written once; Sentinel rewrites it with what it
    learns (the current primary, replicas, other Sentinels), so a restarted
    Sentinel resumes where it was.
    """

    def __init__(self, directory: Path, primary_port: int, *, binary: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.primary_port = primary_port
        self.binary = binary
        self.process = None

    @property
    def config(self) -> Path:
        return self.directory / "sentinel.conf"

    def start(self) -> Self:
        if self.process is not None and self.process.poll() is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.config.exists():
            self.config.write_text(
                f"port {self.port}\n"
                "bind 127.0.0.1\n"
                f'dir "{self.directory}"\n'
                f'logfile "{self.directory / "sentinel.log"}"\n'
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary_port} {QUORUM}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n",
                encoding="utf-8",
            )
        return self._launch(
            [self.binary, str(self.config), "--sentinel"],
            self.port,
            10.0,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


class SentinelTopology:
    """Primary + replica + three Sentinels; which server is primary changes on failover."""

    def __init__(
        self, directory: Path, *, appendonly: bool = True, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.directory = directory
        self.extra_args = extra_args
        first = RedisServer(directory / "redis-a", appendonly=appendonly, extra_args=extra_args)
        second = RedisServer(
            directory / "redis-b",
            appendonly=appendonly,
            extra_args=(*extra_args, "--replicaof", "127.0.0.1", str(first.port)),
        )
        self.servers = (first, second)
        self.sentinel_servers = tuple(
            SentinelServer(directory / f"sentinel-{n}", first.port, binary=first.binary)
            for n in range(3)
        )

    @property
    def sentinels(self) -> tuple[tuple[str, int], ...]:
        return tuple(("127.0.0.1", s.port) for s in self.sentinel_servers)

    @property
    def sentinels_env(self) -> str:
        """``GATEWAY_REDIS_SENTINELS`` for this topology."""
        return ",".join(f"{host}:{port}" for host, port in self.sentinels)

    @property
    def url(self) -> str:
        """``GATEWAY_REDIS_URL``: with Sentinel only its database counts, not its address."""
        return "redis://127.0.0.1:6379/0"

    def start(self) -> Self:
        for server in self.servers:
            server.start()
        self.wait_for_replicas(1)
        for sentinel in self.sentinel_servers:
            sentinel.start()
        self.wait_until(lambda: self._sentinels_agree(replicas=1), "sentinels see the replica")
        return self

    def stop(self) -> None:
        for sentinel in self.sentinel_servers:
            sentinel.stop()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def processes(self) -> tuple[RedisServer | SentinelServer, ...]:
        """Every server and Sentinel of the topology."""
        return (*self.servers, *self.sentinel_servers)

    def primary_address(self) -> tuple[str, int] | None:
        """The primary as the first answering Sentinel reports it."""
        for host, port in self.sentinels:
            try:
                with redis.Redis(host=host, port=port, socket_timeout=1) as client:
                    found = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
                    )
            except redis.RedisError:
                continue
            if found:
                return str(found[0].decode() if isinstance(found[0], bytes) else found[0]), int(
                    found[1]
                )
        return None

    def primary(self) -> RedisServer:
        address = self.primary_address()
        for server in self.servers:
            if address is not None and server.port == address[1]:
                return server
        raise ServiceError(f"no Sentinel names a primary of this topology (saw {address})")

    def replica(self) -> RedisServer:
        primary = self.primary()
        return next(server for server in self.servers if server is not primary)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary (no AOF flush, as in a crash); return it."""
        primary = self.primary()
        primary.kill()
        return primary

    def wait_for_failover(self, old_port: int, timeout_s: float = 30.0) -> None:
        """Until a Sentinel names a primary other than ``old_port`` that accepts writes."""

        def promoted() -> bool:
            address = self.primary_address()
            if address is None or address[1] == old_port:
                return False
            return _role(address[1]) == "master"

        self.wait_until(promoted, f"a replica replaces the primary on port {old_port}", timeout_s)

    def rejoin(self, server: RedisServer) -> None:
        """Restart ``server`` (killed) as a replica of the current primary."""
        primary = self.primary()
        server.extra_args = (*self.extra_args, "--replicaof", "127.0.0.1", str(primary.port))
        server.start()

    def wait_for_replicas(self, count: int, timeout_s: float = 30.0) -> None:
        """Until the primary has ``count`` replicas online and in sync."""
        primary_port = (
            self.servers[0].port
            if not any(s.process for s in self.sentinel_servers)
            else self.primary().port
        )
        self.wait_until(
            lambda: _online_replicas(primary_port) >= count,
            f"{count} replica(s) in sync with port {primary_port}",
            timeout_s,
        )

    def _sentinels_agree(self, *, replicas: int) -> bool:
        for host, port in self.sentinels:
            try:
                with redis.Redis(host=host, port=port, socket_timeout=1) as client:
                    info = client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
            except redis.RedisError:
                return False
            fields = (
                dict(zip(info[::2], info[1::2], strict=False)) if isinstance(info, list) else info
            )
            decoded = {_text(k): _text(v) for k, v in fields.items()}
            if int(decoded.get("num-slaves", 0)) < replicas:
                return False
            if int(decoded.get("num-other-sentinels", 0)) < len(self.sentinel_servers) - 1:
                return False
        return True

    @staticmethod
    def wait_until(
        condition: Callable[[], bool], what: str, timeout_s: float = 30.0, interval_s: float = 0.1
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(interval_s)
        raise ServiceError(f"timed out after {timeout_s:g} s waiting until {what}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _role(port: int) -> str | None:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return _text(client.execute_command("ROLE")[0])
    except redis.RedisError:
        return None


def _online_replicas(port: int) -> int:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            info = client.info("replication")
    except redis.RedisError:
        return 0
    return sum(
        1
        for key, value in info.items()
        if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )
