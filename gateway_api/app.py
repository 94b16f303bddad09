"""The API app factory: :func:`create_app` builds one Litestar app from settings.

Routes: ``POST /v1/events/{source}`` (:mod:`gateway_api.ingest`),
``/v1/admin/...`` (:mod:`gateway_api.admin`),
``GET /health/live``, ``GET /health/ready`` (:mod:`gateway_api.health`),
``GET /metrics`` (:mod:`gateway_api.metrics`), OpenAPI under ``/schema``
(:mod:`gateway_api.openapi`). Clients are opened in the lifespan and closed on
shutdown (:class:`gateway_api.resources.ApiResources`); every exception is
answered by :func:`gateway_api.problems.handle_exception`; every request
passes through :class:`gateway_api.context.RequestContextMiddleware`.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import structlog
from litestar import Litestar
from litestar.datastructures import State

from gateway_api.admin import admin_router
from gateway_api.context import RequestContextMiddleware
from gateway_api.health import live, ready
from gateway_api.ingest import ingest_event
from gateway_api.metrics import metrics_endpoint
from gateway_api.openapi import openapi_config
from gateway_api.problems import handle_exception
from gateway_api.resources import ApiResources
from shared.queue import QueueUnavailable
from shared.settings import Settings

__all__ = ["create_app"]

log = structlog.get_logger("gateway_api")
# First-generation threshold of the cyclic GC once the app is up (see the lifespan).
_GC_YOUNG_THRESHOLD: Final = 5_000


def create_app(settings: Settings) -> Litestar:
    """A new API app for ``settings``, with its own clients, metrics and state.

    Raises :class:`shared.settings.SettingsError` if a source is misconfigured.
    Starting the app (its lifespan) fails if Redis is unreachable: an API that
    cannot queue cannot accept anything, and the supervisor restarts it.
    """
    resources = ApiResources(settings)

    @asynccontextmanager
    async def clients(_: Litestar) -> AsyncIterator[None]:
        try:
            await resources.open()
        except QueueUnavailable:
            log.exception("api.startup_failed")
            raise
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
            await resources.close()

    app = Litestar(
        route_handlers=[ingest_event, admin_router(), live, ready, metrics_endpoint],
        # The ingest route reads its body itself, bounded by GATEWAY_MAX_BODY_BYTES;
        # the admin API's bodies are small JSON documents.
        request_max_body_size=64 * 1024,
        lifespan=[clients],
        state=State({"resources": resources}),
        exception_handlers={Exception: handle_exception},
        openapi_config=openapi_config(),
        logging_config=None,
        debug=False,
    )
    # Wrap outside Litestar's routing and exception handling (where Litestar itself
    # wraps CORS): app-level `middleware=` would skip 404 and 405 answers.
    app.asgi_handler = RequestContextMiddleware(app.asgi_handler, resources.metrics)
    return app
