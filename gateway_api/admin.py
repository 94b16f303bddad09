"""The admin API (docs/contract.md §3.2): ``/v1/admin/...`` behind a bearer token.

Routes (all answer JSON; errors are problem+json):

* ``GET  /v1/admin/events/{idempotency_key}`` — the key's ``processed_events``
  record: status, attempts, last error, attempt log;
* ``GET  /v1/admin/dead-letters`` — ``source, code, reason, status, since,
  until, limit (1..500, default 50), cursor`` → ``{items, next_cursor}``;
* ``GET  /v1/admin/dead-letters/{idempotency_key}`` — one dead letter in full;
* ``POST /v1/admin/dead-letters/{idempotency_key}/replay`` — body optional
  ``{"by", "dry_run"}``; 202 when a replay job was queued, 200 for a dry run
  or a no-op (``already_succeeded``, ``already_replayed``, ``in_flight``);
* ``POST /v1/admin/dead-letters/{idempotency_key}/discard`` — body
  ``{"reason", "by"}``; a missing or blank reason is 400;
* ``GET  /v1/admin/stream`` — ``text/event-stream``: one ``status`` event per
  worker status change, ``data`` JSON with ``idempotency_key``, ``source``,
  ``status`` (:class:`shared.live.StatusChange`); optional ``source`` filter;
* ``POST /v1/admin/dead-letters/replay`` — body: the list filters (``status``
  only ``pending``) plus ``dry_run``, ``limit`` (1..500, default 100),
  ``rate_per_s``, ``by`` → ``{summary, results}``.

Every route uses :class:`shared.dlq.DeadLetterService`, the service behind
``gateway dlq``. ``by`` defaults to ``admin-api``.

Access: with ``GATEWAY_ADMIN_TOKEN`` unset every admin route answers exactly
as an unknown route does (404); with it set, a request without
``Authorization: Bearer <token>``, or with another token, gets 401
``unauthorized`` (compared in constant time) before its parameters or body
are looked at. Idempotency keys contain ``:``, which may be sent as is or
as ``%3A``; a key containing ``/`` cannot be addressed in a path (use
``gateway dlq``).

Unlike the ingest route, these routes read and write MongoDB on the request
path (an operator's action, not a courier's).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import Stream
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from msgspec import Meta, Struct

from gateway_api.console.live import StatusRelay, event_stream
from gateway_api.problems import ProblemError
from gateway_api.resources import ApiResources
from shared.contracts import ProblemCode
from shared.dlq import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    DeadLetterDetail,
    DeadLetterFilter,
    DeadLetterReason,
    DeadLetterService,
    DeadLetterStatus,
    DiscardResult,
    EventRecord,
    InvalidRequest,
    Pacer,
    Page,
    ReplayAction,
    ReplayResult,
    ReplaySummary,
    Selection,
    parse_time,
)
from shared.live import StatusChange

__all__ = [
    "ADMIN_PATH",
    "DEFAULT_OPERATOR",
    "BulkReplayAnswer",
    "BulkReplayRequest",
    "DiscardRequest",
    "ReplayRequest",
    "admin_router",
    "parse_choice",
    "provide_service",
    "require_admin_token",
]

ADMIN_PATH: Final = "/v1/admin"
DEFAULT_OPERATOR: Final = "admin-api"
DEFAULT_BULK_LIMIT: Final = 100
_BEARER: Final = "bearer "
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="gateway-admin"'}

Operator = Annotated[str, Meta(min_length=1, max_length=200)]


class ReplayRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of a single replay (optional)."""

    by: Operator = DEFAULT_OPERATOR
    dry_run: bool = False


class DiscardRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of a discard: why the event will never be replayed."""

    reason: str | None = None
    by: Operator = DEFAULT_OPERATOR


class BulkReplayRequest(Selection[str], frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of a bulk replay: the list filters, plus how much and how fast."""

    dry_run: bool = False
    limit: Annotated[int, Meta(ge=1, le=MAX_PAGE_LIMIT)] = DEFAULT_BULK_LIMIT
    rate_per_s: Annotated[float, Meta(gt=0)] | None = None
    by: Operator = DEFAULT_OPERATOR


class BulkReplayAnswer(Struct, frozen=True):
    """Counts, and each replayed entry; entries that failed are in ``summary.failures``."""

    summary: ReplaySummary
    results: list[ReplayResult]


def require_admin_token(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard: 404 when no admin token is configured, 401 unless the request carries it."""
    resources: ApiResources = connection.app.state.resources
    expected = resources.settings.admin_token
    if not expected:
        raise NotFoundException
    header = connection.headers.get("authorization", "")
    if not header[: len(_BEARER)].lower() == _BEARER:
        raise ProblemError(
            ProblemCode.UNAUTHORIZED,
            "the admin API needs an Authorization: Bearer <token> header",
            headers=_CHALLENGE,
        )
    given = header[len(_BEARER) :].strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ProblemError(
            ProblemCode.UNAUTHORIZED, "the bearer token is not valid", headers=_CHALLENGE
        )


async def provide_service(request: Request[Any, Any, Any]) -> AsyncIterator[DeadLetterService]:
    """The dead-letter service of one request (the console's too)."""
    # Over the app's own clients, opened once in the lifespan: its MongoDB client,
    # its Redis pool and the enqueuer the ingest route uses.
    resources: ApiResources = request.app.state.resources
    async with DeadLetterService(
        resources.mongo_db,
        resources.redis,
        resources.settings.queue_name,
        enqueuer=resources.enqueuer,
    ) as service:
        yield service


def parse_choice[E: (DeadLetterReason, DeadLetterStatus)](
    kind: type[E], value: str | None, name: str
) -> E | None:
    """``value`` as a member of ``kind`` (blank → ``None``), else :class:`InvalidRequest`."""
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except ValueError as exc:
        choices = ", ".join(member.value for member in kind)
        raise InvalidRequest(f"{name} must be one of {choices}, not {value!r}") from exc


def _selection(
    source: str | None,
    code: str | None,
    reason: DeadLetterReason | None,
    status: DeadLetterStatus | None,
    since: str | None,
    until: str | None,
) -> DeadLetterFilter:
    now = datetime.now(UTC)
    return DeadLetterFilter(
        source=source or None,
        code=code or None,
        reason=reason,
        status=status,
        since=parse_time(since, now=now, name="since") if since else None,
        until=parse_time(until, now=now, name="until") if until else None,
    )


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_PAGE_LIMIT
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_PAGE_LIMIT}, not {value!r}")
    return limit


KeyParam = Annotated[str, PathParameter(description="Idempotency key, `{source}:{event_id}`.")]
Service = NamedDependency[DeadLetterService]


@get("/events/{idempotency_key:str}", summary="A key's processing record")
async def get_event(idempotency_key: KeyParam, service: Service) -> EventRecord:
    """Status, attempts and last error of one idempotency key in ``processed_events``."""
    return await service.event(idempotency_key)


@get("/dead-letters", summary="List dead letters")
async def list_dead_letters(
    service: Service,
    source: Annotated[str | None, QueryParameter(description="courier id")] = None,
    code: Annotated[str | None, QueryParameter(description="error.code")] = None,
    reason: Annotated[
        str | None, QueryParameter(description="permanent | retries_exhausted")
    ] = None,
    status: Annotated[
        str | None, QueryParameter(description="pending | replayed | discarded")
    ] = None,
    since: Annotated[
        str | None, QueryParameter(description="RFC 3339, a date, or an age such as 2h")
    ] = None,
    until: Annotated[str | None, QueryParameter(description="RFC 3339, a date, or an age")] = None,
    limit: Annotated[str | None, QueryParameter(description="1..500, default 50")] = None,
    cursor: Annotated[
        str | None, QueryParameter(description="next_cursor of the previous page")
    ] = None,
) -> Page:
    """Dead letters, newest first, filtered; pass ``next_cursor`` back for the next page."""
    selection = _selection(
        source,
        code,
        parse_choice(DeadLetterReason, reason, "reason"),
        parse_choice(DeadLetterStatus, status, "status"),
        since,
        until,
    )
    return await service.list(selection, limit=_limit(limit), cursor=cursor or None)


@get("/dead-letters/{idempotency_key:str}", summary="One dead letter")
async def get_dead_letter(idempotency_key: KeyParam, service: Service) -> DeadLetterDetail:
    """The event, every attempt, every replay, and the key's processing record."""
    return await service.show(idempotency_key)


@post("/dead-letters/replay", summary="Replay dead letters by filter", status_code=HTTP_200_OK)
async def replay_matching(
    service: Service, data: JSONBody[BulkReplayRequest | None] = None
) -> BulkReplayAnswer:
    """Replay the pending dead letters that match, newest first, at most ``limit``."""
    body = data or BulkReplayRequest()
    selection = _selection(body.source, body.code, body.reason, body.status, body.since, body.until)
    pacer = Pacer(body.rate_per_s) if body.rate_per_s is not None else None
    summary = ReplaySummary(dry_run=body.dry_run)
    results: list[ReplayResult] = []
    async for item in service.replay_matching(
        selection, by=body.by, limit=body.limit, dry_run=body.dry_run, pacer=pacer
    ):
        summary.add(item)
        if isinstance(item, ReplayResult):
            results.append(item)
    return BulkReplayAnswer(summary=summary, results=results)


@post("/dead-letters/{idempotency_key:str}/replay", summary="Replay one dead letter")
async def replay_one(
    idempotency_key: KeyParam, service: Service, data: JSONBody[ReplayRequest | None] = None
) -> Response[ReplayResult]:
    """Re-enqueue the original event (202), or say why nothing had to be done (200)."""
    body = data or ReplayRequest()
    result = await service.replay(idempotency_key, by=body.by, dry_run=body.dry_run)
    status = HTTP_202_ACCEPTED if result.action is ReplayAction.ENQUEUED else HTTP_200_OK
    return Response(result, status_code=status)


@post(
    "/dead-letters/{idempotency_key:str}/discard",
    summary="Discard one dead letter",
    status_code=HTTP_200_OK,
)
async def discard_one(
    idempotency_key: KeyParam, service: Service, data: JSONBody[DiscardRequest | None] = None
) -> DiscardResult:
    """Mark a pending dead letter ``discarded`` for good; ``reason`` is required."""
    body = data or DiscardRequest()
    return await service.discard(idempotency_key, by=body.by, reason=body.reason)


@get("/stream", summary="Live status changes (Server-Sent Events)", media_type="text/event-stream")
async def status_stream(
    request: Request[Any, Any, Any],
    source: Annotated[str | None, QueryParameter(description="only this courier")] = None,
) -> Stream:
    """Each worker status change as it happens (docs/contract.md §3.5)."""
    relay: StatusRelay | None = request.app.state.status_relay
    if relay is None:
        raise NotFoundException

    def accept(change: StatusChange) -> bool:
        return not source or change.source == source

    return Stream(
        event_stream(relay, accept),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def admin_router() -> Router:
    """The ``/v1/admin`` router, guarded by :func:`require_admin_token`."""
    return Router(
        path=ADMIN_PATH,
        route_handlers=[
            get_event,
            list_dead_letters,
            get_dead_letter,
            replay_matching,
            replay_one,
            discard_one,
            status_stream,
        ],
        guards=[require_admin_token],
        dependencies={"service": Provide(provide_service)},
        tags=["admin"],
    )
