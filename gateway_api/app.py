"""The API app factory: :func:`create_app` builds one Litestar app from settings.

Routes: ``POST /v1/events/{source}`` (:mod:`gateway_api.ingest`),
``/v1/admin/...`` (:mod:`gateway_api.admin`),
``GET /health/live``, ``GET /health/ready`` (:mod:`gateway_api.health`),
``GET /metrics`` (:mod:`gateway_api.metrics`), OpenAPI under ``/schema``
(:mod:`gateway_api.openapi`), and the on-call console under ``/console``
(:mod:`gateway_api.console`, only with ``GATEWAY_ADMIN_TOKEN`` set). With
``GATEWAY_ADMIN_PORT`` set, :func:`create_apps` builds two apps over the same
clients: the public one (ingest, health, metrics) and the internal one
(console, ``/v1/admin``, health) for the second listener. Clients are opened
in the lifespan and closed on shutdown (:class:`gateway_api.resources.ApiResources`);
every exception is answered by :func:`gateway_api.problems.handle_exception`; every request
passes through :class:`gateway_api.context.RequestContextMiddleware`.
"""

from __future__ import annotations

import asyncio
import enum
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import structlog
from litestar import Litestar
from litestar.datastructures import State

from gateway_api.admin import admin_router
from gateway_api.console.auth import Sessions
from gateway_api.console.live import StatusRelay
from gateway_api.console.pages import console_routers, template_config
from gateway_api.context import RequestContextMiddleware
from gateway_api.health import live, ready
from gateway_api.ingest import ingest_event
from gateway_api.metrics import metrics_endpoint
from gateway_api.openapi import openapi_config
from gateway_api.problems import handle_exception
from gateway_api.resources import ApiResources
from shared.live import channel
from shared.queue import QueueUnavailable
from shared.settings import Settings

__all__ = ["Surface", "create_app", "create_apps"]

log = structlog.get_logger("gateway_api")
# First-generation threshold of the cyclic GC once the app is up (see the lifespan).
_GC_YOUNG_THRESHOLD: Final = 5_000


class Surface(enum.StrEnum):
    """Which routes one app serves."""

    ALL = "all"
    """Everything, on the API's one port (``GATEWAY_ADMIN_PORT`` unset)."""
    PUBLIC = "public"
    """Ingest, health and metrics: the port couriers reach."""
    INTERNAL = "internal"
    """Console, ``/v1/admin`` and health: the internal ``GATEWAY_ADMIN_PORT``."""


class _Shared:
    """The clients of one API process, opened by the first app's lifespan, closed by the last."""

    def __init__(self, settings: Settings) -> None:
        self.resources = ApiResources(settings)
        self.relay: StatusRelay | None = None
        self.sessions: Sessions | None = None
        self._users = 0
        self._lock = asyncio.Lock()

    async def enter(self) -> None:
        async with self._lock:
            self._users += 1
            if self._users > 1:
                return
            try:
                await self.resources.open()
            except QueueUnavailable:
                self._users -= 1
                log.exception("api.startup_failed")
                raise
            settings = self.resources.settings
            if settings.admin_token:
                redis = self.resources.redis
                self.sessions = Sessions(redis, settings.queue_name)
                # One subscription per process, fanned out to every stream client.
                self.relay = StatusRelay(redis, channel(settings.queue_name))
                await self.relay.start()

    async def exit(self) -> None:
        async with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            if self.relay is not None:
                await self.relay.stop()
                self.relay = None
            await self.resources.close()


def create_app(settings: Settings) -> Litestar:
    """A new API app for ``settings`` serving every route on one port.

    Raises :class:`shared.settings.SettingsError` if a source is misconfigured.
    Starting the app (its lifespan) fails if Redis is unreachable: an API that
    cannot queue cannot accept anything, and the supervisor restarts it.
    """
    return _build(settings, _Shared(settings), Surface.ALL)


def create_apps(settings: Settings) -> list[tuple[Litestar, int]]:
    """The apps of one API process with their ports: one, or two with ``GATEWAY_ADMIN_PORT``."""
    shared = _Shared(settings)
    if settings.admin_port is None:
        return [(_build(settings, shared, Surface.ALL), settings.port)]
    return [
        (_build(settings, shared, Surface.PUBLIC), settings.port),
        (_build(settings, shared, Surface.INTERNAL), settings.admin_port),
    ]


def _build(settings: Settings, shared: _Shared, surface: Surface) -> Litestar:
    resources = shared.resources

    @asynccontextmanager
    async def clients(app: Litestar) -> AsyncIterator[None]:
        await shared.enter()
        app.state.console_sessions = shared.sessions
        app.state.status_relay = shared.relay
        # Everything built at startup lives as long as the process: move it out of the
        # cyclic collector's reach, so collections under load only scan per-request
        # garbage (full collections over the whole app show up as latency spikes).
        gc.collect()
        gc.freeze()
        # 100 requests in flight keep a few thousand young container objects alive
        # at any moment, so the default first threshold (700) starts a collection
        # every ~100 requests that frees nothing: ~6 % of the API's CPU at load
        # (docs/performance.md). Per-request garbage is freed by reference counts.
        gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        try:
            yield
        finally:
            await shared.exit()

    handlers: list[object] = [live, ready]
    if surface is not Surface.INTERNAL:
        handlers += [ingest_event, metrics_endpoint]
    if surface is not Surface.PUBLIC:
        handlers.append(admin_router())
        if settings.admin_token:
            handlers += console_routers(settings)
    app = Litestar(
        route_handlers=handlers,  # type: ignore[arg-type]
        # The ingest route reads its body itself, bounded by GATEWAY_MAX_BODY_BYTES;
        # the admin API's bodies and the console's forms are small.
        request_max_body_size=64 * 1024,
        lifespan=[clients],
        state=State({"resources": resources, "console_sessions": None, "status_relay": None}),
        exception_handlers={Exception: handle_exception},
        openapi_config=openapi_config(),
        template_config=template_config() if surface is not Surface.PUBLIC else None,
        logging_config=None,
        debug=False,
    )
    # Wrap outside Litestar's routing and exception handling (where Litestar itself
    # wraps CORS): app-level `middleware=` would skip 404 and 405 answers.
    app.asgi_handler = RequestContextMiddleware(app.asgi_handler, resources.metrics)
    return app
