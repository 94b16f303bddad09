"""``GET /health/live`` and ``GET /health/ready`` (docs/contract.md §3.2).

Liveness answers 200 while the process serves requests. Readiness asks Redis
and MongoDB concurrently (Redis ``ROLE``, Mongo ``hello``), reporting the
topology each check sees (docs/contract.md §4.5): Redis ``single`` or
``sentinel`` with the primary's address and its replicas, MongoDB
``standalone`` or ``replica_set``. Each check is each bounded by
:data:`~gateway_api.resources.READINESS_TIMEOUT_S`, so it answers within about
a second even when a dependency hangs; 503 names the failing check with an
error string that never carries a URL or a password.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
import structlog
from litestar import MediaType, Request, Response, get
from litestar.openapi import ResponseSpec
from redis.exceptions import RedisError

from gateway_api.resources import READINESS_TIMEOUT_S, ApiResources
from shared.storage.errors import StorageError
from shared.storage.mongo import topology as mongo_topology

__all__ = ["Check", "Liveness", "Readiness", "live", "ready"]

log = structlog.get_logger("gateway_api")

_MAX_ERROR_CHARS: Final = 200


class Check(msgspec.Struct, frozen=True, omit_defaults=True):
    """One dependency's state: ``latency_ms`` and ``topology`` if it answered, else ``error``."""

    ok: bool
    latency_ms: float | None = None
    error: str | None = None
    topology: dict[str, str | int] | None = None


class Readiness(msgspec.Struct, frozen=True):
    """``status`` is ``ok`` when every check is, else ``unavailable``."""

    status: str
    checks: dict[str, Check]


class Liveness(msgspec.Struct, frozen=True):
    status: str


_encoder = msgspec.json.Encoder()


def _describe(exc: BaseException, secrets: Iterable[str]) -> str:
    text = f"{type(exc).__name__}: {exc}"
    for secret in secrets:
        text = text.replace(secret, "***")
    return text[:_MAX_ERROR_CHARS]


async def _check(
    name: str, probe: Callable[[], Awaitable[dict[str, str | int]]], secrets: Iterable[str]
) -> tuple[str, Check]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_S):
            seen = await probe()
    except TimeoutError:
        error = f"no answer within {READINESS_TIMEOUT_S} s"
    except (RedisError, StorageError, OSError) as exc:
        error = _describe(exc, secrets)
    else:
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        return name, Check(ok=True, latency_ms=latency_ms, topology=seen)
    log.warning("health.check_failed", check=name, error=error)
    return name, Check(ok=False, error=error)


async def _redis_topology(resources: ApiResources) -> dict[str, str | int]:
    """``ROLE`` of the server the API writes to, and where it is."""
    redis = resources.redis
    role = await redis.execute_command("ROLE")  # type: ignore[no-untyped-call]
    kind = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
    if kind != "master":
        raise RedisError(f"the queue's Redis is a {kind}, not a primary")
    manager = getattr(redis.connection_pool, "sentinel_manager", None)
    if manager is not None:
        host, port = await manager.discover_master(resources.settings.redis_sentinel_master)
        mode = "sentinel"
    else:
        kwargs = redis.connection_pool.connection_kwargs
        host, port, mode = kwargs.get("host", "localhost"), kwargs.get("port", 6379), "single"
    return {"mode": mode, "primary": f"{host}:{port}", "replicas": len(role[2])}


@get("/health/live", sync_to_thread=False, tags=["operations"])
def live() -> Liveness:
    """200 while the process runs."""
    return Liveness(status="ok")


@get(
    "/health/ready",
    tags=["operations"],
    responses={
        200: ResponseSpec(
            data_container=Readiness,
            description="Redis and MongoDB both answered.",
            generate_examples=False,
        ),
        503: ResponseSpec(
            data_container=Readiness,
            description="A dependency is down; the failing check has ok=false and an error.",
            generate_examples=False,
        ),
    },
)
async def ready(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 when Redis and MongoDB both answer a ping, else 503 with the same shape."""
    resources: ApiResources = request.app.state.resources
    settings = resources.settings
    urls = (settings.redis_url, settings.mongo_url)
    secrets = [password for url in urls if (password := urlsplit(url).password)]
    results = await asyncio.gather(
        _check("redis", lambda: _redis_topology(resources), secrets),
        _check("mongo", lambda: mongo_topology(resources.mongo_db), secrets),
    )
    checks = dict(results)
    healthy = all(check.ok for check in checks.values())
    body = Readiness(status="ok" if healthy else "unavailable", checks=checks)
    return Response(
        _encoder.encode(body), status_code=200 if healthy else 503, media_type=MediaType.JSON
    )
