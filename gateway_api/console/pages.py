"""The console's pages (docs/contract.md §3.5): server-rendered, usable without JavaScript.

Every read goes through :class:`shared.dlq.Lookup` and every action through
:class:`shared.dlq.DeadLetterService` — the service behind ``gateway dlq`` and
``/v1/admin``; these handlers only parse forms and render templates.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency, Provide
from litestar.exceptions import PermissionDeniedException
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Stream, Template
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_303_SEE_OTHER
from litestar.template import TemplateConfig
from msgspec import Struct

from gateway_api.admin import parse_choice, provide_service
from gateway_api.console.auth import (
    CONSOLE_PATH,
    SESSION_COOKIE,
    SESSION_TTL_S,
    LoginRequired,
    Sessions,
    csrf_middleware,
    require_session,
    token_matches,
)
from gateway_api.console.live import StatusRelay, event_stream
from gateway_api.resources import ApiResources
from shared.dlq import (
    DeadLetterError,
    DeadLetterFilter,
    DeadLetterNotFound,
    DeadLetterReason,
    DeadLetterService,
    DeadLetterStatus,
    EventNotFound,
    Lookup,
    NotDiscardable,
    NotReplayable,
    ReplayResult,
    ReplaySummary,
    parse_time,
)
from shared.live import StatusChange
from shared.settings import Settings

__all__ = ["STATIC_DIR", "TEMPLATE_DIR", "console_router", "console_routers", "template_config"]

TEMPLATE_DIR: Final = Path(__file__).parent / "templates"
STATIC_DIR: Final = Path(__file__).parent / "static"
OPERATOR: Final = "console"
REPLAY_LIMIT: Final = 500
"""Most dead letters one console bulk replay (and its dry run) covers."""
_FILTERS: Final = ("source", "code", "reason", "status", "since", "until")
_SSE_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Form = URLEncodedBody[dict[str, str]]


class FilterForm(Struct, frozen=True, kw_only=True):
    """The dead-letter filters as given (strings, blank meaning unset)."""

    source: str = ""
    code: str = ""
    reason: str = ""
    status: str = ""
    since: str = ""
    until: str = ""

    @classmethod
    def from_mapping(cls, values: Any) -> FilterForm:
        return cls(**{name: str(values.get(name) or "").strip() for name in _FILTERS})

    def selection(self) -> DeadLetterFilter:
        now = datetime.now(UTC)
        return DeadLetterFilter(
            source=self.source or None,
            code=self.code or None,
            reason=parse_choice(DeadLetterReason, self.reason, "reason"),
            status=parse_choice(DeadLetterStatus, self.status, "status"),
            since=parse_time(self.since, now=now, name="since") if self.since else None,
            until=parse_time(self.until, now=now, name="until") if self.until else None,
        )

    def query(self) -> str:
        return urlencode({name: getattr(self, name) for name in _FILTERS if getattr(self, name)})


def _event_url(key: str) -> str:
    return f"{CONSOLE_PATH}/events/{quote(key, safe=':')}"


def _see_other(url: str) -> Redirect:
    return Redirect(url, status_code=HTTP_303_SEE_OTHER)


def _provide_lookup(request: Request[Any, Any, Any]) -> Lookup:
    resources: ApiResources = request.app.state.resources
    return Lookup(resources.mongo_db, resources.redis, resources.settings.queue_name)


Service = NamedDependency[DeadLetterService]
Reads = NamedDependency[Lookup]


# ── login ───────────────────────────────────────────────────────────────────


@get("/login", name="console:login")
async def login_page() -> Template:
    return Template("login.html", context={"error": None})


@post("/login")
async def login(request: Request[Any, Any, Any], data: Form) -> Response[Any]:
    """The admin token in, a session cookie out; a wrong token is 401 and sets nothing."""
    resources: ApiResources = request.app.state.resources
    if not token_matches(resources.settings, data.get("token", "")):
        return Template(
            "login.html", context={"error": "That is not the admin token."}, status_code=401
        )
    sessions: Sessions = request.app.state.console_sessions
    session_id = await sessions.create()
    redirect = _see_other(CONSOLE_PATH)
    redirect.cookies.append(
        Cookie(
            key=SESSION_COOKIE,
            value=session_id,
            path=CONSOLE_PATH,
            max_age=SESSION_TTL_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    )
    return redirect


@post("/logout", guards=[require_session])
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    sessions: Sessions = request.app.state.console_sessions
    await sessions.end(request.cookies.get(SESSION_COOKIE))
    redirect = _see_other(f"{CONSOLE_PATH}/login")
    redirect.delete_cookie(SESSION_COOKIE, path=CONSOLE_PATH)
    return redirect


# ── pages ───────────────────────────────────────────────────────────────────


@get("/", name="console:overview")
async def overview(reads: Reads) -> Template:
    """Last hour per source, pending dead letters by code, queue depth, small charts."""
    since = datetime.now(UTC) - timedelta(hours=1)
    data = await reads.overview(since=since)
    peak = max([1, *(s.succeeded + s.dead_lettered + s.in_flight for s in data.sources)])
    code_peak = max([1, *data.pending_by_code.values()])
    return Template(
        "overview.html",
        context={"overview": data, "peak": peak, "code_peak": code_peak, "live": "all"},
    )


@get("/events")
async def search(reads: Reads, q: FromQuery[str] = "") -> Response[Any]:
    """Find by idempotency key, event id, shipment id or tracking number."""
    hits = await reads.search(q) if q else []
    if len(hits) == 1:
        hit = hits[0]
        if hit.kind == "event" and hit.idempotency_key is not None:
            return _see_other(_event_url(hit.idempotency_key))
    return Template("search.html", context={"q": q, "hits": hits})


@get("/events/{idempotency_key:str}")
async def event_page(
    idempotency_key: FromPath[str], reads: Reads, done: FromQuery[str] = ""
) -> Template:
    """The timeline: received, each attempt, outcome; the body as received."""
    timeline = await reads.timeline(idempotency_key)
    source = timeline.dead_letter.source if timeline.dead_letter else None
    if source is None:
        source = idempotency_key.partition(":")[0]
    return Template(
        "event.html",
        context={
            "t": timeline,
            "key": idempotency_key,
            "source": source,
            "done": done,
            "live": idempotency_key,
        },
    )


@get("/shipments/{source:str}/{shipment_id:str}")
async def shipment_page(
    source: FromPath[str], shipment_id: FromPath[str], reads: Reads
) -> Template:
    document = await reads.shipment(source, shipment_id)
    if document is None:
        raise EventNotFound(f"{source}:{shipment_id}")
    history = list(reversed(document.get("history") or []))
    return Template("shipment.html", context={"s": document, "history": history, "source": source})


@get("/dead-letters")
async def dead_letters(
    request: Request[Any, Any, Any], service: Service, cursor: FromQuery[str] = ""
) -> Template:
    """The CLI's filters, newest first, paged."""
    form = FilterForm.from_mapping(request.query_params)
    page = await service.list(form.selection(), cursor=cursor or None)
    return Template(
        "dead_letters.html",
        context={"f": form, "page": page, "query": form.query(), "live": "all"},
    )


@get("/dead-letters/replay")
async def replay_preview(request: Request[Any, Any, Any], service: Service) -> Template:
    """The dry run: how many pending dead letters match and which; then a confirm form."""
    form = FilterForm.from_mapping(request.query_params)
    if not form.until:
        # Pin the confirmed replay to what this preview saw: nothing dead-lettered later.
        form = msgspec.structs.replace(form, until=datetime.now(UTC).isoformat())
    return await _replay_page(service, form, dry_run=True)


@post("/dead-letters/replay")
async def replay_confirmed(data: Form, service: Service) -> Template:
    form = FilterForm.from_mapping(data)
    return await _replay_page(service, form, dry_run=False)


async def _replay_page(service: DeadLetterService, form: FilterForm, *, dry_run: bool) -> Template:
    summary, results = await _replay_matching(service, form, dry_run=dry_run)
    context = {"f": form, "summary": summary, "results": results, "dry_run": dry_run}
    return Template("replay.html", context={**context, "limit": REPLAY_LIMIT})


async def _replay_matching(
    service: DeadLetterService, form: FilterForm, *, dry_run: bool
) -> tuple[ReplaySummary, list[ReplayResult]]:
    summary = ReplaySummary(dry_run=dry_run)
    results: list[ReplayResult] = []
    async for item in service.replay_matching(
        form.selection(), by=OPERATOR, limit=REPLAY_LIMIT, dry_run=dry_run
    ):
        summary.add(item)
        if isinstance(item, ReplayResult):
            results.append(item)
    return summary, results


@post("/dead-letters/{idempotency_key:str}/replay")
async def replay_one(idempotency_key: FromPath[str], service: Service) -> Redirect:
    result = await service.replay(idempotency_key, by=OPERATOR)
    return _see_other(f"{_event_url(idempotency_key)}?done={result.action.value}")


@post("/dead-letters/{idempotency_key:str}/discard")
async def discard_one(idempotency_key: FromPath[str], data: Form, service: Service) -> Redirect:
    await service.discard(idempotency_key, by=OPERATOR, reason=data.get("reason"))
    return _see_other(f"{_event_url(idempotency_key)}?done=discarded")


@get("/stream")
async def console_stream(request: Request[Any, Any, Any], key: FromQuery[str] = "") -> Stream:
    """Server-Sent Events for the open page: one key's changes, or every change."""
    relay: StatusRelay = request.app.state.status_relay

    def accept(change: StatusChange) -> bool:
        return not key or key == "all" or change.idempotency_key == key

    return Stream(event_stream(relay, accept), media_type="text/event-stream", headers=_SSE_HEADERS)


# ── errors ──────────────────────────────────────────────────────────────────


def _to_login(request: Request[Any, Any, Any], _: LoginRequired) -> Response[Any]:
    return _see_other(f"{CONSOLE_PATH}/login")


def _service_error(request: Request[Any, Any, Any], exc: DeadLetterError) -> Response[Any]:
    status = 400
    if isinstance(exc, DeadLetterNotFound | EventNotFound):
        status = 404
    elif isinstance(exc, NotReplayable | NotDiscardable):
        status = 409
    return Template(
        "message.html", context={"title": exc.code, "detail": exc.detail}, status_code=status
    )


def _forbidden(request: Request[Any, Any, Any], _: PermissionDeniedException) -> Response[Any]:
    # The CSRF middleware's refusal: nothing was done.
    return Template(
        "message.html",
        context={
            "title": "forbidden",
            "detail": "This form is missing its CSRF token or it expired: reload the page and "
            "try again. Nothing was changed.",
        },
        status_code=403,
    )


def console_router(settings: Settings) -> Router:
    """``/console``: the login (open), every other page behind a session; CSRF on every POST."""
    pages = Router(
        path="/",
        route_handlers=[
            overview,
            search,
            event_page,
            shipment_page,
            dead_letters,
            replay_preview,
            replay_confirmed,
            replay_one,
            discard_one,
            console_stream,
            logout,
        ],
        guards=[require_session],
    )
    return Router(
        path=CONSOLE_PATH,
        route_handlers=[login_page, login, pages],
        middleware=[csrf_middleware(settings)],
        dependencies={
            "service": Provide(provide_service),
            "reads": Provide(_provide_lookup, sync_to_thread=False),
        },
        exception_handlers={
            LoginRequired: _to_login,
            DeadLetterError: _service_error,
            PermissionDeniedException: _forbidden,
        },
        include_in_schema=False,
    )


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja2 (autoescaping) over the console's own templates."""
    return TemplateConfig(directory=TEMPLATE_DIR, engine=JinjaTemplateEngine)


def console_routers(settings: Settings) -> list[Router]:
    """The console's pages and its static files (CSS, JS)."""
    return [
        console_router(settings),
        create_static_files_router(
            path="/console/static", directories=[STATIC_DIR], include_in_schema=False
        ),
    ]
