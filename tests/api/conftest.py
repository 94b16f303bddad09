"""The API under test: ``create_app(settings)`` started in the test's own event loop.

Requests go through ``httpx.ASGITransport`` in the same loop as the test and the
``redis`` fixture, so concurrent requests really are concurrent (Litestar's
``AsyncTestClient`` runs the app on a portal thread and serves one request at
a time). The app's ASGI lifespan runs in a task of its own, as under a server,
and opens the real Redis pool and Mongo client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from litestar import Litestar

from gateway_api.app import create_app
from shared.settings import Settings
from tests.api.harness import asgi_client, running


@pytest.fixture
async def app(settings: Settings, redis: ArqRedis) -> AsyncIterator[Litestar]:
    """The API app for this test's settings, its lifespan entered."""
    app = create_app(settings)
    async with running(app):
        yield app


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client speaking ASGI to :func:`app` in this event loop."""
    async with asgi_client(app) as c:
        yield c


@pytest.fixture
async def client_for(
    make_settings: Callable[..., Settings], redis: ArqRedis
) -> AsyncIterator[Callable[..., Awaitable[httpx.AsyncClient]]]:
    """Start an app with settings overrides and return a client for it (closed after the test)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> httpx.AsyncClient:
            app = create_app(make_settings(**overrides))
            await stack.enter_async_context(running(app))
            return await stack.enter_async_context(asgi_client(app))

        yield start
