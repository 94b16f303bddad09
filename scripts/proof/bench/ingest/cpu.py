"""Server CPU per request, measured in one process: the lever-finder behind issue 15.

``gateway bench-ingest`` measures the real thing (uvicorn on a socket, wrk,
a shared machine) and its figures move by 20 % between runs. This module
measures the same two apps on the same uvicorn HTTP protocol (httptools,
uvloop) but feeds it requests over in-memory transports, so nothing but the
server's own Python work is on the clock (``time.process_time``): no sockets,
no load generator, no scheduling across cores. Redis is real (a private
``redis-server`` with AOF, as in the benchmark) and the app logs its JSON
lines to a file.

Each batch hands one request to each of ``--connections`` keep-alive
connections and waits for every answer, so the ingest app's enqueues of one
loop turn are pipelined as under wrk's 100 connections. Targets alternate
``--rounds`` times (bare, ingest, ingest, bare, ...) after a warm-up round;
each target's median and minimum are reported, with the ingest ÷ bare ratio.
On a shared VM single rounds still move by 10-30 % (other guests); the
minimum is the steadiest figure for comparing two code versions.

``--without log`` (``metrics``, ``context``) adds a target in the same rounds:
the ingest app with that feature switched off by the harness (its
``event.accepted`` line; its metric observations; the request-context
middleware, which also holds the HTTP metrics), to tell what each costs in
place, where it runs slower than alone under ``timeit``. Nothing in the
product changes; only this harness patches the built app.

Run: ``python -m scripts.proof.bench.ingest.cpu`` (``--help`` for options).
Absolute figures are lower than the benchmark's: no syscalls, no kernel
network stack, which add roughly the same ~30 µs to both targets there, so
the benchmark's ratio is lower than this one. Compare differences and two
code versions measured back to back.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import email.utils
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import msgspec
import uvicorn
import uvloop
from uvicorn.lifespan.on import LifespanOn
from uvicorn.server import ServerState

import gateway_api.ingest
from scripts.harness.services import RedisServer
from scripts.proof.bench.apps import create_bare_app
from scripts.proof.bench.ingest.model import QUEUE_NAME, SOURCE
from scripts.proof.bench.ingest.wrk import RouteRequests

__all__ = ["cpu_command", "measure", "signed_requests"]

_ADDRESS = ("127.0.0.1", 8000)


class _Transport:
    """Just enough of an asyncio transport for uvicorn's HTTP protocol, in memory."""

    def __init__(self, on_response: Callable[[bytes], None]) -> None:
        self._on_response = on_response
        self._writes = 0
        self._status = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": _ADDRESS, "sockname": _ADDRESS}.get(name, default)

    def write(self, data: bytes) -> None:
        # Both apps answer with Content-Length: status line and headers, then the body.
        self._writes += 1
        if self._writes % 2:
            self._status = data[9:12]
        else:
            self._on_response(self._status)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def signed_requests(count: int, nonce: str, requests: RouteRequests) -> list[bytes]:
    """``count`` raw HTTP requests of one route, each a new event signed now."""
    now = time.time()
    return [requests.raw(f"evt_{nonce}_{index}", f"shp_{index}", now) for index in range(count)]


async def measure(
    app: Any, raw_requests: list[bytes], *, connections: int, profile: cProfile.Profile | None
) -> tuple[float, dict[bytes, int]]:
    """CPU µs per request serving ``raw_requests`` through uvicorn's httptools protocol."""
    config = uvicorn.Config(
        app, http="httptools", lifespan="on", access_log=False, server_header=False,
        log_config=None, log_level="warning",
    )  # fmt: skip
    config.load()
    lifespan = LifespanOn(config)
    await lifespan.startup()
    state = ServerState()
    state.default_headers = [
        (b"date", email.utils.formatdate(usegmt=True).encode()),
        *config.encoded_headers,
    ]
    statuses: dict[bytes, int] = {}
    pending = 0
    done = asyncio.get_running_loop().create_future()

    def on_response(status: bytes) -> None:
        nonlocal pending, done
        statuses[status] = statuses.get(status, 0) + 1
        pending -= 1
        if pending == 0:
            done.set_result(None)

    protocols: list[asyncio.Protocol] = []
    transports = [_Transport(on_response) for _ in range(connections)]
    for transport in transports:
        protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=state, app_state=lifespan.state
        )
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocols.append(protocol)
    started = time.process_time()
    if profile is not None:
        profile.enable()
    for first in range(0, len(raw_requests), connections):
        batch = raw_requests[first : first + connections]
        pending = len(batch)
        done = asyncio.get_running_loop().create_future()
        for protocol, data in zip(protocols, batch, strict=False):
            protocol.data_received(data)
        await done
    if profile is not None:
        profile.disable()
    cpu_s = time.process_time() - started
    if any(transport.is_closing() for transport in transports):
        raise click.ClickException("the server closed a keep-alive connection")
    for protocol in protocols:
        protocol.connection_lost(None)
    await lifespan.shutdown()
    return cpu_s / len(raw_requests) * 1e6, statuses


FEATURES = ("log", "metrics", "context")
"""What ``--without`` can switch off in the ingest app."""


class _Silent:
    def info(self, *_: object, **__: object) -> None:
        pass


class _NoObservation:
    def observe(self, _: float) -> None:
        pass


class _RequestIdOnly:
    """The request-context middleware's one duty the handler needs: ``scope["state"]``'s id."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._ids = (f"{n:032x}" for n in itertools.count())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope.setdefault("state", {})["request_id"] = next(self._ids)
        await self.app(scope, receive, send)


@contextlib.contextmanager
def _without(app: Any, feature: str | None) -> Iterator[None]:
    """``app`` with ``feature`` switched off while the block runs."""
    if feature == "log":
        logger = gateway_api.ingest.log
        gateway_api.ingest.log = _Silent()
        try:
            yield
        finally:
            gateway_api.ingest.log = logger
    elif feature == "metrics":
        metrics = app.state.resources.metrics
        histogram = metrics.enqueue_duration
        for name in ("observe_request", "accepted"):
            setattr(metrics, name, lambda *_: None)
        metrics.enqueue_duration = _NoObservation()
        try:
            yield
        finally:
            del metrics.observe_request, metrics.accepted
            metrics.enqueue_duration = histogram
    elif feature == "context":
        middleware = app.asgi_handler
        app.asgi_handler = _RequestIdOnly(middleware.app)
        try:
            yield
        finally:
            app.asgi_handler = middleware
    else:
        yield


@contextlib.contextmanager
def _pinned(redis: RedisServer) -> Iterator[None]:
    """As in the benchmark: this process on CPU 0, Redis on CPU 1, while the block runs."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        yield
        return
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    if redis.process is not None:
        os.sched_setaffinity(redis.process.pid, {1})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)


def _gateway_app(redis_url: str, source: dict[str, Any], log: Path) -> Any:
    from gateway_api.app import create_app
    from shared.logging import configure_logging
    from shared.settings import load_settings

    settings = load_settings(
        {
            "GATEWAY_REDIS_URL": redis_url,
            # Readiness only; never reached on the ingest path (the client connects lazily).
            "GATEWAY_MONGO_URL": "mongodb://127.0.0.1:1/?directConnection=true",
            "GATEWAY_QUEUE_NAME": QUEUE_NAME,
            "GATEWAY_SOURCES": msgspec.json.encode({SOURCE: source}).decode(),
            "GATEWAY_LOG_LEVEL": "INFO",
            "GATEWAY_LOG_FORMAT": "json",
        }
    )
    configure_logging("INFO", "json", process="api", stream=log.open("ab", buffering=0))
    return create_app(settings)


@click.command("bench-ingest-cpu")
@click.option("--requests", "count", default=4_000, show_default=True, help="Requests per run.")
@click.option("--rounds", default=10, show_default=True, help="Runs of each target, alternating.")
@click.option("--connections", default=100, show_default=True, help="Requests in flight.")
@click.option("--target", "targets", multiple=True, default=("bare", "ingest"), show_default=True)
@click.option("--without", "features", multiple=True, type=click.Choice(FEATURES),
              help="Also measure the ingest app without this feature (repeatable).")  # fmt: skip
@click.option("--profile", "profile_path", type=click.Path(path_type=Path), default=None,
              help="Write a cProfile of the ingest runs here (pstats format).")  # fmt: skip
def cpu_command(
    count: int,
    rounds: int,
    connections: int,
    targets: tuple[str, ...],
    features: tuple[str, ...],
    profile_path: Path | None,
) -> None:
    """Server CPU µs per request of the bare endpoint and the ingest route, in-process."""
    with tempfile.TemporaryDirectory(prefix="ingest-cpu-") as tmp:
        workdir = Path(tmp)
        with RedisServer(workdir / "redis", appendonly=True) as redis, _pinned(redis):
            route = RouteRequests("standard")
            log = workdir / "api.log"
            apps = {
                "bare": create_bare_app(),
                "ingest": _gateway_app(redis.url, route.source, log),
            }
            ablations = {f"ingest-no-{feature}": feature for feature in features}
            apps.update(dict.fromkeys(ablations, apps["ingest"]))
            profile = cProfile.Profile() if profile_path else None
            order = [*targets, *ablations]
            figures: dict[str, list[float]] = {t: [] for t in order}
            for number in range(rounds + 1):
                for target in order:
                    raw = signed_requests(count, f"{os.getpid()}_{number}_{target}", route)
                    with _without(apps[target], ablations.get(target)):
                        us, statuses = asyncio.run(
                            measure(
                                apps[target], raw, connections=connections,
                                profile=profile if target == "ingest" and number else None,
                            ),
                            loop_factory=uvloop.new_event_loop,
                        )  # fmt: skip
                    if set(statuses) != {b"202"}:
                        raise click.ClickException(f"{target}: answers other than 202: {statuses}")
                    if number:  # round 0 warms up (imports, caches, first connections)
                        figures[target].append(us)
                        click.echo(f"round {number} {target:>17}: {us:7.1f} µs/request")
                order.reverse()
            if profile is not None and profile_path is not None:
                profile.dump_stats(profile_path)
    medians = {t: statistics.median(v) for t, v in figures.items()}
    for target, values in figures.items():
        shown = " ".join(f"{v:.1f}" for v in values)
        click.echo(
            f"median {target:>17}: {medians[target]:7.1f} µs/request, "
            f"min {min(values):.1f} (rounds {shown})"
        )
    if "bare" in medians and "ingest" in medians:
        click.echo(
            f"ingest − bare {medians['ingest'] - medians['bare']:.1f} µs, "
            f"ingest ÷ bare {medians['ingest'] / medians['bare']:.2f}×"
        )


if __name__ == "__main__":
    cpu_command()
