"""The console under test: the real app (``create_app``) on real Redis and MongoDB, in process."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from gateway_api.app import create_app
from shared.settings import Settings
from tests.api.harness import asgi_client, running

TOKEN = "adm_" + secrets.token_urlsafe(24)  # generated per run
_CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')


def csrf_token(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = _CSRF.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


@pytest.fixture
async def console(
    make_settings: Callable[..., Settings], redis: ArqRedis
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with the admin token set (not logged in)."""
    app = create_app(make_settings(admin_token=TOKEN))
    async with running(app), asgi_client(app) as client:
        yield client


async def log_in(client: httpx.AsyncClient, token: str = TOKEN) -> httpx.Response:
    page = await client.get("/console/login")
    assert page.status_code == 200
    return await client.post(
        "/console/login", data={"token": token, "_csrf_token": csrf_token(page.text)}
    )


@pytest.fixture
async def session(console: httpx.AsyncClient) -> httpx.AsyncClient:
    """The console client, logged in."""
    answer = await log_in(console)
    assert answer.status_code == 303, answer.text
    return console


async def form_token(client: httpx.AsyncClient, url: str) -> str:
    page = await client.get(url)
    assert page.status_code == 200, page.text
    return csrf_token(page.text)


def hidden(**values: Any) -> dict[str, str]:
    return {name: str(value) for name, value in values.items()}
