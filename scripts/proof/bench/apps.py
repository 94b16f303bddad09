"""The two ASGI apps ``gateway bench-ingest`` compares, as uvicorn factories.

Both are served by the same ``uvicorn --factory`` command line, so the only
difference between the two measurements is the application:

- :func:`create_bare_app`: the floor. ``POST /v1/events/{source}`` answers 202
  with a tiny JSON body; no middleware, no logging, no body read.
- :func:`create_gateway_app`: the product, built exactly as ``gateway api``
  builds it (settings from ``GATEWAY_*``, logging configured first), with its
  signature check, validation, metrics, logging and Redis enqueue on the path.
- :func:`create_minimal_enqueue_app`: a calibration point between the two, the
  "minimal handler" of docs/contract.md §6's reference figures: decode the event and
  enqueue it with the product's :class:`~shared.queue.Enqueuer` (one Lua call,
  enqueues of one loop turn in one pipeline), nothing else. Measure it with
  ``gateway bench-ingest --ingest-factory scripts.proof.bench.apps:create_minimal_enqueue_app``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, post

from shared.contracts import QueuedEvent, decode_event, idempotency_key
from shared.queue import Enqueuer, open_queue_pool
from shared.settings import load_settings

__all__ = ["create_bare_app", "create_gateway_app", "create_minimal_enqueue_app"]


@post("/v1/events/{source:str}", status_code=202, sync_to_thread=False)
def accept(source: str) -> dict[str, str]:
    """Accept anything, like a gateway that does no work."""
    return {"status": "accepted", "source": source}


def create_bare_app() -> Litestar:
    """A Litestar app with only the ingest route, answering 202."""
    return Litestar(route_handlers=[accept], openapi_config=None)


def create_gateway_app() -> Litestar:
    """The real API app from ``GATEWAY_*`` settings, as ``gateway api`` runs it."""
    # Imported here so serving the bare app never imports the gateway.
    from gateway_api.app import create_app
    from shared.logging import configure_logging

    settings = load_settings(os.environ)
    configure_logging(settings.log_level, settings.log_format, process="api")
    return create_app(settings)


def create_minimal_enqueue_app() -> Litestar:
    """Decode and enqueue, nothing else: no signature check, logging, metrics or problems."""
    settings = load_settings(os.environ)
    enqueuers: list[Enqueuer] = []

    @asynccontextmanager
    async def queue(_: Litestar) -> AsyncIterator[None]:
        redis = await open_queue_pool(settings.redis_url, settings.queue_name, retries=0)
        enqueuer = Enqueuer(redis, settings.queue_name)
        await enqueuer.load_script()
        enqueuers.append(enqueuer)
        try:
            yield
        finally:
            await enqueuer.close()
            await redis.aclose()

    @post("/v1/events/{source:str}", status_code=202)
    async def enqueue(request: Request[Any, Any, Any], source: str) -> Response[bytes]:
        body = await request.body()
        event = decode_event(body)
        key = idempotency_key(source, event.event_id)
        job = QueuedEvent(
            idempotency_key=key,
            source=source,
            event_id=event.event_id,
            body=body,
            request_id=uuid.uuid4().hex,
            received_at_ms=int(time.time() * 1000),
        )
        stored = await enqueuers[0].enqueue(key, job)
        return Response(b'{"status":"accepted"}', status_code=202 if stored else 200)

    return Litestar(route_handlers=[enqueue], lifespan=[queue], openapi_config=None)
