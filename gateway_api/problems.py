"""Every error answer of the API, as RFC 9457 ``application/problem+json``.

This module is the one place that turns exceptions into HTTP answers:
:func:`handle_exception` is registered as the app's only exception handler and
maps

* :class:`ProblemError` (raised by our handlers with a :class:`ProblemCode`),
* :class:`shared.signing.SignatureError` (401 with the verifier's code),
* :class:`shared.queue.QueueUnavailable` (503 ``queue_unavailable`` with ``Retry-After``),
* the dead-letter service's :class:`shared.dlq.DeadLetterError` (admin API: 404
  unknown key, 400 invalid request, 409 not replayable / not discardable),
* :class:`shared.storage.errors.StoreUnavailable` (503 ``store_unavailable``
  with ``Retry-After``; only the admin API reads MongoDB on a request),
* Litestar's own :class:`~litestar.exceptions.HTTPException` (404 unknown route,
  405, 413 body too large, 400 malformed request or invalid parameters),
* anything else (500 ``internal_error``, logged with its traceback, never shown)

to a :class:`shared.contracts.Problem` body. It also counts and logs each
rejection once, so handlers only raise.

Problem ``type`` URIs are tag URIs (RFC 4151), one per code, e.g.
``tag:courier-gateway.dev,2026:problem:signature_invalid``: stable identifiers
that do not pretend to be documentation pages (RFC 9457 §3.1.1 allows
non-resolvable type URIs). ``docs/api.md`` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec
import structlog
from litestar import Response
from litestar.exceptions import ClientException, HTTPException, ValidationException

from gateway_api.context import request_id_of
from shared.contracts import FieldError, Problem, ProblemCode
from shared.dlq import DeadLetterError, DeadLetterNotFound, EventNotFound, InvalidRequest
from shared.queue import QueueUnavailable
from shared.signing import SignatureError
from shared.storage.errors import StoreUnavailable

if TYPE_CHECKING:
    from litestar import Request

    from gateway_api.resources import ApiResources

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPE_PREFIX",
    "RETRY_AFTER_S",
    "ProblemError",
    "handle_exception",
    "problem_type",
]

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_TYPE_PREFIX: Final = "tag:courier-gateway.dev,2026:problem:"
RETRY_AFTER_S: Final = 5
"""``Retry-After`` of a 503: long enough for a Redis restart or failover."""

log = structlog.get_logger("gateway_api")

# code -> (HTTP status, title). A title is the same for every occurrence of a code.
_CODES: Final[Mapping[ProblemCode, tuple[int, str]]] = {
    ProblemCode.MALFORMED_JSON: (400, "Malformed JSON"),
    ProblemCode.BAD_REQUEST: (400, "Bad request"),
    ProblemCode.SIGNATURE_MISSING: (401, "Signature missing"),
    ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE: (401, "Timestamp out of tolerance"),
    ProblemCode.SIGNATURE_INVALID: (401, "Signature invalid"),
    ProblemCode.UNKNOWN_SOURCE: (401, "Unknown source"),
    ProblemCode.UNAUTHORIZED: (401, "Unauthorized"),
    ProblemCode.NOT_FOUND: (404, "Not found"),
    ProblemCode.METHOD_NOT_ALLOWED: (405, "Method not allowed"),
    ProblemCode.CONFLICT: (409, "Conflict"),
    ProblemCode.PAYLOAD_TOO_LARGE: (413, "Payload too large"),
    ProblemCode.UNSUPPORTED_MEDIA_TYPE: (415, "Unsupported media type"),
    ProblemCode.VALIDATION_FAILED: (422, "Validation failed"),
    ProblemCode.INTERNAL_ERROR: (500, "Internal error"),
    ProblemCode.QUEUE_UNAVAILABLE: (503, "Queue unavailable"),
    ProblemCode.STORE_UNAVAILABLE: (503, "Store unavailable"),
}

_HTTP_STATUS_CODES: Final[Mapping[int, ProblemCode]] = {
    400: ProblemCode.BAD_REQUEST,
    401: ProblemCode.UNAUTHORIZED,
    404: ProblemCode.NOT_FOUND,
    405: ProblemCode.METHOD_NOT_ALLOWED,
    409: ProblemCode.CONFLICT,
    413: ProblemCode.PAYLOAD_TOO_LARGE,
    415: ProblemCode.UNSUPPORTED_MEDIA_TYPE,
}

# Rejections a courier causes on the ingest route; counted per source and logged as event.rejected.
_SIGNATURE_CODES: Final = frozenset(
    {
        ProblemCode.SIGNATURE_MISSING,
        ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE,
        ProblemCode.SIGNATURE_INVALID,
        ProblemCode.UNKNOWN_SOURCE,
    }
)

_INTERNAL_DETAIL: Final = "an unexpected error occurred; it was logged under this request_id"

_encoder = msgspec.json.Encoder()


class ProblemError(Exception):
    """An answer that is a problem: raised by handlers, rendered by :func:`handle_exception`.

    The HTTP status and title follow from ``code``; ``errors`` is the per-field
    list of a 422; ``headers`` are added to the answer (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        code: ProblemCode,
        detail: str,
        *,
        errors: Sequence[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers) if headers else {}


def problem_type(code: ProblemCode) -> str:
    """The stable ``type`` URI of a problem code."""
    return PROBLEM_TYPE_PREFIX + code.value


def problem_status(code: ProblemCode) -> int:
    """The HTTP status a problem code is answered with."""
    return _CODES[code][0]


def problem_title(code: ProblemCode) -> str:
    """The ``title`` of a problem code."""
    return _CODES[code][1]


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar exception handler for every exception: the problem+json answer."""
    resources: ApiResources = request.app.state.resources
    problem = _to_problem(exc, resources)
    _record(request, exc, problem, resources)
    status, title = _CODES[problem.code]
    body = Problem(
        type=problem_type(problem.code),
        title=title,
        status=status,
        detail=problem.detail,
        code=problem.code,
        request_id=request_id_of(request.scope),
        errors=problem.errors,
    )
    return Response(
        content=_encoder.encode(body),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


def _to_problem(exc: Exception, resources: ApiResources) -> ProblemError:
    if isinstance(exc, ProblemError):
        return exc
    if isinstance(exc, SignatureError):
        return ProblemError(exc.code, exc.detail)
    if isinstance(exc, QueueUnavailable):
        return ProblemError(
            ProblemCode.QUEUE_UNAVAILABLE,
            "the event was not queued; retry later",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    match exc:
        case DeadLetterNotFound() | EventNotFound():
            return ProblemError(ProblemCode.NOT_FOUND, exc.detail)
        case InvalidRequest():
            return ProblemError(ProblemCode.BAD_REQUEST, exc.detail)
        case DeadLetterError():  # NotReplayable, NotDiscardable
            return ProblemError(ProblemCode.CONFLICT, exc.detail)
        case StoreUnavailable():
            return ProblemError(
                ProblemCode.STORE_UNAVAILABLE,
                "MongoDB is unavailable; retry later (repeating a replay or discard is safe)",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        case ValidationException(extra=list(problems)) if problems:
            details = "; ".join(_validation_detail(p) for p in problems)
            return ProblemError(ProblemCode.BAD_REQUEST, details)
        case ClientException(status_code=400) if type(exc) is ClientException:
            # Litestar's plain 400: a request body its decoder could not read.
            return ProblemError(ProblemCode.BAD_REQUEST, f"body is not valid JSON: {exc.detail}")
        case HTTPException():
            return _from_http_exception(exc, resources)
    return ProblemError(ProblemCode.INTERNAL_ERROR, _INTERNAL_DETAIL)


def _validation_detail(problem: Any) -> str:
    if not isinstance(problem, dict):
        return str(problem)
    where = problem.get("source", "request")
    key = problem.get("key")
    named = f"{where}.{key}" if key and key != "data" else where
    return f"{named}: {problem.get('message')}"


def _from_http_exception(exc: HTTPException, resources: ApiResources) -> ProblemError:
    code = _HTTP_STATUS_CODES.get(exc.status_code)
    if code is None:
        code = ProblemCode.INTERNAL_ERROR if exc.status_code >= 500 else ProblemCode.BAD_REQUEST
    if code is ProblemCode.PAYLOAD_TOO_LARGE:
        detail = f"the body is larger than {resources.settings.max_body_bytes} bytes"
    elif code is ProblemCode.INTERNAL_ERROR:
        detail = _INTERNAL_DETAIL
    else:
        detail = str(exc.detail)
    headers = {"Allow": exc.headers["allow"]} if exc.headers and "allow" in exc.headers else None
    return ProblemError(code, detail, headers=headers)


def _record(
    request: Request[Any, Any, Any],
    exc: Exception,
    problem: ProblemError,
    resources: ApiResources,
) -> None:
    """Count and log the problem once: never the body, never a secret."""
    code = problem.code
    scope = request.scope
    ingest = resources.is_ingest(scope)
    source = resources.source_label(scope) if ingest else None
    if source is not None:
        resources.metrics.rejected(source, code.value)
        if code in _SIGNATURE_CODES:
            resources.metrics.signature_failure(source, code.value)
    if code is ProblemCode.INTERNAL_ERROR:
        log.error("request.failed", path=scope["path"], exc_info=exc)
    elif code is ProblemCode.QUEUE_UNAVAILABLE:
        log.warning("enqueue.failed", source=source, error=str(exc))
    elif source is not None:
        log.info("event.rejected", code=code.value, source=source)
    else:
        log.info("request.rejected", code=code.value, path=scope["path"])
