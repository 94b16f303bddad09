"""``POST /v1/events/{source}``: verify, validate, enqueue (docs/contract.md §3.1).

Checks run in the order the contract fixes, and the first failure answers:
body size → content type → source → signature → JSON → schema, the last two
by the source's adapter (docs/contract.md §3.4). The body is
read first, straight from the ASGI ``receive`` channel and bounded by
``GATEWAY_MAX_BODY_BYTES``: a ``Content-Length`` over the limit is refused
before anything is read, and a streamed (chunked) body is refused as soon as
it passes the limit, so an oversized body is never read whole. It is verified
exactly as received, before it is parsed.

Problems are raised, never rendered here: :mod:`gateway_api.problems` turns
them into ``application/problem+json`` answers and counts them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import msgspec
import structlog
from litestar import Request, post
from msgspec import Struct

from gateway_api.context import request_id_of
from gateway_api.openapi import INGEST_RESPONSES, IngestOperation
from gateway_api.problems import ProblemError
from gateway_api.resources import INGEST_PATH, ApiResources
from shared.adapters.base import Adapter, Canonical, Ignored, PayloadError, TrackingUpdate
from shared.adapters.standard import dotted_error
from shared.contracts import (
    Accepted,
    FieldError,
    ProblemCode,
    QueuedEvent,
    TooDeeplyNested,
    decode_event,
    event_field_errors,
    idempotency_key,
)

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send

__all__ = ["IgnoredAnswer", "JsonAnswer", "ingest_event", "read_body", "validation_errors"]

log = structlog.get_logger("gateway_api")

_JSON: Final = "application/json"
_encoder = msgspec.json.Encoder()
_NOT_DECODED: Final[Any] = object()


def _headers(scope: Scope, wanted: frozenset[bytes]) -> dict[str, str]:
    """The headers this route reads (``wanted``), by lower-case name, first occurrence winning.

    Built directly from the ASGI scope: ``request.headers`` decodes every header
    and costs several microseconds per request in ``isinstance`` checks.
    ``wanted`` holds the size and type headers and every configured adapter's
    signature headers (:attr:`ApiResources.read_headers`).
    """
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in wanted:
            headers.setdefault(name.decode(), value.decode("latin-1"))
    return headers


def _too_large(limit: int) -> ProblemError:
    return ProblemError(ProblemCode.PAYLOAD_TOO_LARGE, f"the body is larger than {limit} bytes")


async def read_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes, read from ``receive``.

    Refuses an announced ``Content-Length`` over the limit without reading, and
    a streamed body as soon as it passes the limit (the rest is never read).
    """
    if content_length is not None:
        if not content_length.isdigit():
            raise ProblemError(ProblemCode.BAD_REQUEST, "Content-Length is not a number")
        if int(content_length) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # Not our failure: the client went away before the body was complete.
            raise ProblemError(
                ProblemCode.BAD_REQUEST, "the client disconnected before the body was complete"
            )
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


class IgnoredAnswer(Struct, frozen=True):
    """Body of the 200 answer to a verified notification that is not a tracking update."""

    status: str
    reason: str
    request_id: str


class JsonAnswer:
    """A minimal ASGI response for the ingest route's 202 and 200 answers.

    Litestar's ``Response`` and ``ASGIResponse`` build header containers and run
    type checks worth ~10 µs per request, a tenth of the ingest path's budget;
    these two answers need nothing but a status, a JSON body and two headers.
    """

    __slots__ = ("body", "status")

    def __init__(self, answer: Accepted | IgnoredAnswer, status: int) -> None:
        self.body = _encoder.encode(answer)
        self.status = status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def _is_json(content_type: str | None) -> bool:
    """``application/json``, case-insensitive, parameters such as ``charset`` allowed."""
    if content_type is None:
        return False
    if content_type == _JSON:
        return True
    return content_type.partition(";")[0].strip().lower() == _JSON


def validation_errors(
    exc: msgspec.ValidationError, document: Any = _NOT_DECODED
) -> list[FieldError]:
    """The 422 ``errors`` list: msgspec's first error, then every other invalid field.

    Paths are dotted: ``$.shipment.id`` becomes ``shipment.id``,
    ``$.data.items[0]`` becomes ``data.items[0]``; a missing field is named by
    its own path; an error about the whole body has the field ``""``. With the
    decoded JSON ``document``, a second pass (:func:`event_field_errors`, on
    this error path only) adds the fields msgspec did not reach.
    """
    first = dotted_error(exc)
    if document is _NOT_DECODED:
        return [first]
    rest = [error for error in event_field_errors(document) if error.field != first.field]
    return [first, *rest]


def _invalid_body(body: bytes, exc: msgspec.DecodeError) -> ProblemError:
    if isinstance(exc, TooDeeplyNested):
        # A parser limit, like the body size: the courier learns it at once.
        return ProblemError(
            ProblemCode.VALIDATION_FAILED,
            "the body is JSON but nests too deeply to be read",
            errors=[FieldError(field="", message=str(exc))],
        )
    if isinstance(exc, msgspec.ValidationError):
        # The typed decode stops at the first schema error; the rest of the body
        # may still be malformed, and JSON errors outrank schema errors.
        try:
            document = msgspec.json.decode(body)
        except msgspec.DecodeError as malformed:
            return ProblemError(ProblemCode.MALFORMED_JSON, f"the body is not JSON: {malformed}")
        return ProblemError(
            ProblemCode.VALIDATION_FAILED,
            "the body is JSON but not a valid courier event",
            errors=validation_errors(exc, document),
        )
    return ProblemError(ProblemCode.MALFORMED_JSON, f"the body is not JSON: {exc}")


@post(
    INGEST_PATH,
    status_code=202,
    tags=["ingest"],
    summary="Submit a courier event",
    operation_class=IngestOperation,
    responses=INGEST_RESPONSES,
)
async def ingest_event(request: Request[Any, Any, Any]) -> JsonAnswer:
    """Queue one signed courier event for processing.

    202 when the event is newly queued, 200 when its idempotency key
    (`{source}:{event_id}`) is already queued or finished within the kept-result
    window, otherwise an `application/problem+json` answer with a stable `code`.
    """
    scope = request.scope
    resources: ApiResources = scope["litestar_app"].state.resources
    headers = _headers(scope, resources.read_headers)
    # 1. size
    body = await read_body(
        request.receive, headers.get("content-length"), resources.settings.max_body_bytes
    )
    # 2. content type
    if not _is_json(headers.get("content-type")):
        raise ProblemError(
            ProblemCode.UNSUPPORTED_MEDIA_TYPE, "the body must be sent as application/json"
        )
    # 3. source: configured ids all match SOURCE_ID_PATTERN (checked at startup).
    # The path parameter is read from the scope: a `source: str` argument costs a
    # signature-model conversion per request.
    source: str = scope["path_params"]["source"]
    adapter = resources.adapters.get(source)
    if adapter is None:
        raise ProblemError(ProblemCode.UNKNOWN_SOURCE, "no such source is configured")
    # 4. signature, over the raw bytes
    now = time.time()
    adapter.verify(body, headers, now=now)
    request_id = request_id_of(scope)
    # 5. JSON and 6. schema
    if source in resources.canonical:
        # The canonical body, decoded directly (the fast path; 422 lists every field).
        try:
            event_id = decode_event(body).event_id
        except msgspec.DecodeError as exc:
            raise _invalid_body(body, exc) from exc
    else:
        event_id, ignored = _carrier_event_id(resources, source, adapter, body, request_id)
        if ignored is not None:
            return JsonAnswer(IgnoredAnswer("ignored", ignored, request_id), 200)

    key = idempotency_key(source, event_id)
    # The body travels byte-exact (docs/contract.md §4.4); the worker decodes it
    # again, and normalises a carrier's body with the configuration of the moment.
    job = QueuedEvent(
        idempotency_key=key,
        source=source,
        event_id=event_id,
        body=body,
        request_id=request_id,
        received_at_ms=int(now * 1000),
        adapter=adapter.kind,
    )
    if await resources.enqueue(job):
        resources.metrics.accepted(source)
        log.info("event.accepted", source=source, idempotency_key=key)
        return JsonAnswer(Accepted("accepted", key, request_id), 202)
    resources.metrics.duplicate(source)
    log.info("event.duplicate", source=source, idempotency_key=key)
    return JsonAnswer(Accepted("duplicate", key, request_id), 200)


def _carrier_event_id(
    resources: ApiResources, source: str, adapter: Adapter, body: bytes, request_id: str
) -> tuple[str, str | None]:
    """A carrier body's event id (docs/contract.md §3.4), or why it is ignored.

    A tracking update is queued whether or not its status is mapped: an
    unmapped one is dead-lettered ``unmapped_status`` by the worker, where a
    replay after a vocabulary change can apply it.
    """
    try:
        normalised = adapter.normalise(body)
    except PayloadError as exc:
        raise ProblemError(exc.code, exc.detail, errors=list(exc.errors) or None) from exc
    match normalised:
        case Ignored(reason=reason):
            resources.metrics.ignored(source)
            log.info("event.ignored", source=source, reason=reason, request_id=request_id)
            return "", reason
        case TrackingUpdate(event_id=event_id):
            return event_id, None
        case Canonical(event=event):
            return event.event_id, None
