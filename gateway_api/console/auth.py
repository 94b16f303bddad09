"""The console's login, sessions and CSRF (docs/contract.md §3.5).

* ``POST /console/login`` with the admin token (form field ``token``) stores a
  new session in Redis (``{queue}:console:session:{sha256(id)}``, expiring
  after :data:`SESSION_TTL_S`) and sets the cookie :data:`SESSION_COOKIE` to its
  random id: ``HttpOnly``, ``SameSite=Strict``, ``Path=/console``, ``Secure``
  when the request came over HTTPS. A wrong token answers 401 and sets
  nothing. ``POST /console/logout`` deletes the session. Sessions live in
  Redis, so every API replica accepts them and a logout ends them everywhere.
* Every console page but the login needs a session (:func:`require_session`);
  without one the browser is redirected to the login.
* CSRF: Litestar's :class:`~litestar.middleware.csrf.CSRFMiddleware` on the
  console router only (signed double-submit cookie, form field
  ``_csrf_token``); the ingest route and ``/v1/admin`` never pass through it.
  Its secret is derived from the admin token, so rotating the token also
  invalidates outstanding CSRF tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any, Final

from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from redis.asyncio import Redis

from shared.settings import Settings

__all__ = [
    "CSRF_COOKIE",
    "SESSION_COOKIE",
    "SESSION_TTL_S",
    "LoginRequired",
    "Sessions",
    "csrf_middleware",
    "require_session",
    "token_matches",
]

SESSION_COOKIE: Final = "gateway_console"
CSRF_COOKIE: Final = "gateway_console_csrf"
SESSION_TTL_S: Final = 8 * 3600
CONSOLE_PATH: Final = "/console"


class LoginRequired(Exception):
    """A console page was asked for without a valid session (answered with a redirect)."""


def _derived(settings: Settings, purpose: bytes) -> str:
    assert settings.admin_token is not None
    return hmac.new(settings.admin_token.encode(), purpose, hashlib.sha256).hexdigest()


def token_matches(settings: Settings, given: str) -> bool:
    """Whether ``given`` is the admin token (constant time)."""
    expected = settings.admin_token
    return bool(expected) and hmac.compare_digest(given.encode(), (expected or "").encode())


class Sessions:
    """Console sessions in Redis: only a hash of each session id is stored."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self._redis = redis
        self._prefix = f"{queue_name}:console:session:"

    def _key(self, session_id: str) -> str:
        return self._prefix + hashlib.sha256(session_id.encode()).hexdigest()

    async def create(self) -> str:
        session_id = secrets.token_urlsafe(32)
        await self._redis.set(self._key(session_id), b"1", ex=SESSION_TTL_S)
        return session_id

    async def valid(self, session_id: str | None) -> bool:
        if not session_id or len(session_id) > 200:
            return False
        return bool(await self._redis.exists(self._key(session_id)))

    async def end(self, session_id: str | None) -> None:
        if session_id:
            await self._redis.delete(self._key(session_id))


async def require_session(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard of every console page but the login: a live session or :class:`LoginRequired`."""
    sessions: Sessions = connection.app.state.console_sessions
    if not await sessions.valid(connection.cookies.get(SESSION_COOKIE)):
        raise LoginRequired


def csrf_middleware(settings: Settings) -> DefineMiddleware:
    """The CSRF check of every console POST (403 without a valid token, before the handler)."""
    config = CSRFConfig(
        secret=_derived(settings, b"gateway-console-csrf"),
        cookie_name=CSRF_COOKIE,
        cookie_path=CONSOLE_PATH,
        cookie_httponly=True,
        cookie_samesite="strict",
        header_name="x-csrf-token",
    )
    return DefineMiddleware(CSRFMiddleware, config=config)
