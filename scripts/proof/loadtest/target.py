"""What ``gateway loadtest`` loads: a stack of its own, started here, or a running gateway
(``--target``); its endpoints, process ids and the mock downstream's failure rules."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from rich.console import Console

from scripts.devstack.stack import Stack, proof_stack
from scripts.harness.services import ServiceError
from scripts.proof.loadtest.options import (
    STACK_ENV,
    LoadTestError,
    LoadTestOptions,
)
from shared.settings import Settings, SourceConfig, load_settings, redact_url

__all__ = [
    "Endpoints",
    "inject_failures",
    "open_endpoints",
    "restore_failures",
    "stack_pids",
    "target_endpoints",
]

_STACK_URLS: Final = ("api_url", "mongo_url", "redis_url", "mock_url")
"""Fields of :class:`Endpoints` that a started :class:`Stack` has under the same names."""


@dataclass
class Endpoints:
    api_url: str
    mongo_url: str
    mongo_db: str
    redis_url: str
    queue_name: str
    mock_url: str | None
    source: str
    locust_env: dict[str, str]
    worker_metrics_ports: list[int] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    embedded_mongo: bool = False
    stack: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def open_endpoints(
    options: LoadTestOptions, settings: Settings, console: Console
) -> Iterator[Endpoints]:
    if options.target is not None:
        yield target_endpoints(options, settings)
        return
    stack = proof_stack(
        options,
        redis_url=options.redis_url,
        mock_args=["--transient-rate", f"{options.transient_rate:g}", "--seed", str(options.seed)],
        env=STACK_ENV,
        shutdown_grace_s=5,
    )
    console.log(f"starting the stack: API, {options.workers} workers, mock downstream…")
    try:
        stack.start()
    except ServiceError as exc:
        raise LoadTestError(
            f"the stack did not start: {exc} (logs: {options.output / 'logs'})"
        ) from exc
    try:
        env = dict(os.environ)
        if stack.generated_source is not None:
            env.pop("GATEWAY_SOURCES", None)
            env["GATEWAY_SOURCES_FILE"] = str(stack.sources_file)
        sources = load_settings(env).sources
        source = _mix(options.source, sources)
        yield Endpoints(
            **{url: getattr(stack, url) for url in _STACK_URLS},
            mongo_db=options.mongo_db,
            queue_name=settings.queue_name,
            source=source,
            locust_env=env,
            worker_metrics_ports=list(stack.worker_metrics_ports),
            pids=stack_pids(stack),
            embedded_mongo=stack.mongo_is_embedded,
            stack={
                "mode": "started by this command",
                "workers": options.workers,
                "worker concurrency": settings.worker_concurrency,
                "worker poll delay": f"{settings.worker_poll_delay_s:g} s",
                "worker settings": ", ".join(f"{k}={v}" for k, v in STACK_ENV.items()),
                "mock downstream": (
                    f"503 for {options.transient_rate:.0%} of deliveries (seed {options.seed})"
                ),
                "redis": "redis-server started by this command"
                if options.redis_url is None
                else redact_url(options.redis_url),
                "queue": settings.queue_name,
                "traffic mix": traffic_mix(source, sources),
            },
        )
    finally:
        console.log("stopping the stack…")
        stack.stop()


def _mix(chosen: str | None, sources: Mapping[str, SourceConfig]) -> str:
    """The sources the load is spread over (comma-separated; default every configured one)."""
    names = [name for name in (chosen or "").split(",") if name] or list(sources)
    for name in names:
        if name not in sources:
            raise LoadTestError(f"--source {name!r} is not a configured source")
    return ",".join(names)


def traffic_mix(source: str, sources: Mapping[str, SourceConfig]) -> str:
    """The mix as the report shows it: ``dev (standard), ups (ups), …``."""
    return ", ".join(f"{name} ({sources[name].kind})" for name in source.split(","))


def stack_pids(stack: Stack) -> dict[str, int]:
    """The stack's processes by name (API, workers, mock, and the stores started here)."""
    pids = {child.name: child.pid for child in stack.children() if child.pid is not None}
    for name, service in (("mongo", stack.mongo), ("redis", stack.redis)):
        if service is not None and service.process is not None:
            pids[name] = service.process.pid
    return pids


def target_endpoints(options: LoadTestOptions, settings: Settings) -> Endpoints:
    if not settings.sources:
        raise LoadTestError(
            "--target needs the stack's sources to sign with: set GATEWAY_SOURCES_FILE "
            "(or source the stack.env that `gateway dev` wrote)"
        )
    source = _mix(options.source, settings.sources)
    mongo_url = options.mongo_url or settings.mongo_url
    redis_url = options.redis_url or settings.redis_url
    return Endpoints(
        api_url=options.target.rstrip("/") if options.target else "",
        mongo_url=mongo_url,
        mongo_db=options.mongo_db,
        redis_url=redis_url,
        queue_name=settings.queue_name,
        mock_url=options.mock_url,
        source=source,
        locust_env=dict(os.environ),
        stack={
            "mode": f"running stack at {options.target}",
            "mock downstream": options.mock_url or "none given (--mock-url): deliveries unchecked",
            "redis": redact_url(redis_url),
            "queue": settings.queue_name,
            "traffic mix": traffic_mix(source, settings.sources),
        },
    )


def inject_failures(
    endpoints: Endpoints, options: LoadTestOptions, console: Console
) -> dict[str, Any] | None:
    """Make the mock fail transiently (it already does when we started it); the old rules."""
    if endpoints.mock_url is None:
        if options.target is not None:
            console.log("no --mock-url: downstream deliveries will not be checked")
        return None
    with httpx.Client(base_url=endpoints.mock_url, timeout=10) as http:
        try:
            before = http.post("/control", json={}).raise_for_status().json()
            http.post(
                "/control", json={"transient_rate": options.transient_rate, "seed": options.seed}
            ).raise_for_status()
        except httpx.HTTPError as exc:
            raise LoadTestError(f"mock downstream at {endpoints.mock_url}: {exc}") from exc
    return dict(before)


def restore_failures(endpoints: Endpoints, previous: dict[str, Any] | None) -> None:
    if endpoints.mock_url is None or previous is None:
        return
    with (
        httpx.Client(base_url=endpoints.mock_url, timeout=10) as http,
        contextlib.suppress(httpx.HTTPError),
    ):
        http.post("/control", json={"transient_rate": previous.get("transient_rate", 0.0)})
