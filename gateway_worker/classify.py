"""The one place that decides whether a failed attempt is retried (docs/contract.md §4).

Transient (retried with backoff until ``GATEWAY_MAX_ATTEMPTS``):
MongoDB network/timeout/not-primary errors and server errors the server
marks retryable (``StoreUnavailable``), Redis
errors, downstream timeouts, connection errors, downstream 408, 425, 429 and
5xx, our own job deadline, and any exception we do not know.

Permanent (dead-lettered after this attempt): ``invalid_transition``,
``order_mismatch``, an undecodable payload, downstream answers 3xx/4xx other
than 408/425/429, MongoDB refusing an operation (``StoreRejected``), and a
document the driver cannot encode or the server refuses as a document
(``DocumentNotStorable``: an integer beyond 64 bits, a BSON encoding error,
a document over 16 MiB).
"""

from __future__ import annotations

from typing import Final

import msgspec
from msgspec import Struct
from redis.exceptions import RedisError

from gateway_worker.errors import (
    DownstreamStatusError,
    DownstreamTimeout,
    DownstreamUnreachable,
    ErrorCode,
    PermanentError,
    TransientError,
)
from shared.queue import QueueUnavailable
from shared.storage.errors import DocumentNotStorable, StoreRejected, StoreUnavailable

__all__ = ["TRANSIENT_STATUSES", "Classification", "classify"]

TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
"""Downstream 4xx answers that mean "try again later"; every 5xx is transient too."""
_MESSAGE_LIMIT: Final = 500


class Classification(Struct, frozen=True, kw_only=True):
    """What to do about one failed attempt."""

    transient: bool
    code: ErrorCode
    message: str
    retry_after_s: float | None = None


def classify(exc: BaseException) -> Classification:
    """Classify ``exc``, raised by one attempt of a job."""
    match exc:
        case PermanentError():
            return _permanent(exc.code, exc.message)
        case TransientError():
            return _transient(exc.code, exc.message, retry_after_s=exc.retry_after_s)
        case DownstreamStatusError():
            if exc.status >= 500 or exc.status in TRANSIENT_STATUSES:
                return _transient(
                    ErrorCode.DOWNSTREAM_UNAVAILABLE, str(exc), retry_after_s=exc.retry_after_s
                )
            return _permanent(ErrorCode.DOWNSTREAM_REJECTED, str(exc))
        case DownstreamTimeout():
            return _transient(ErrorCode.DOWNSTREAM_TIMEOUT, str(exc))
        case DownstreamUnreachable():
            return _transient(ErrorCode.DOWNSTREAM_UNREACHABLE, str(exc))
        case StoreUnavailable():
            return _transient(ErrorCode.STORE_UNAVAILABLE, str(exc))
        case DocumentNotStorable():
            return _permanent(ErrorCode.DOCUMENT_NOT_STORABLE, str(exc))
        case StoreRejected():
            return _permanent(ErrorCode.STORE_REJECTED, str(exc))
        case QueueUnavailable() | RedisError():
            return _transient(ErrorCode.QUEUE_UNAVAILABLE, _describe(exc))
        case msgspec.ValidationError() | msgspec.DecodeError():
            return _permanent(ErrorCode.UNDECODABLE_PAYLOAD, str(exc))
        case ConnectionError():
            return _transient(ErrorCode.CONNECTION_ERROR, _describe(exc))
        case _:
            return _transient(ErrorCode.UNEXPECTED_ERROR, _describe(exc))


def _transient(
    code: ErrorCode, message: str, *, retry_after_s: float | None = None
) -> Classification:
    return Classification(
        transient=True, code=code, message=message[:_MESSAGE_LIMIT], retry_after_s=retry_after_s
    )


def _permanent(code: ErrorCode, message: str) -> Classification:
    return Classification(transient=False, code=code, message=message[:_MESSAGE_LIMIT])


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
