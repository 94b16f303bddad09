"""Errors a job can end with, and the machine codes the classifier gives them.

::

    ProcessingError                  the event itself cannot be processed as is
    ├── PermanentError(code)         invalid_transition, order_mismatch, undecodable_payload,
    │                                unmapped_status
    └── TransientError(code)         job_timeout, ... (may succeed later)

    DownstreamError                  the downstream delivery failed (translated from httpx)
    ├── DownstreamTimeout            no answer within GATEWAY_DOWNSTREAM_TIMEOUT_S
    ├── DownstreamUnreachable        connection refused, reset, protocol error
    └── DownstreamStatusError(status, retry_after_s)   answered other than 2xx

Storage errors arrive as :mod:`shared.storage.errors` types, queue errors as
:class:`shared.queue.QueueUnavailable`. Which of all these are retried is
decided in one place, :func:`gateway_worker.classify.classify`.
"""

from __future__ import annotations

import enum

__all__ = [
    "DownstreamError",
    "DownstreamStatusError",
    "DownstreamTimeout",
    "DownstreamUnreachable",
    "ErrorCode",
    "PermanentError",
    "ProcessingError",
    "TransientError",
]


class ErrorCode(enum.StrEnum):
    """Stable codes in ``last_error.code``, attempt logs, dead letters and metrics."""

    INVALID_TRANSITION = "invalid_transition"
    ORDER_MISMATCH = "order_mismatch"
    UNDECODABLE_PAYLOAD = "undecodable_payload"
    UNMAPPED_STATUS = "unmapped_status"
    DOWNSTREAM_REJECTED = "downstream_rejected"
    DOWNSTREAM_UNAVAILABLE = "downstream_unavailable"
    DOWNSTREAM_TIMEOUT = "downstream_timeout"
    DOWNSTREAM_UNREACHABLE = "downstream_unreachable"
    STORE_UNAVAILABLE = "store_unavailable"
    STORE_REJECTED = "store_rejected"
    DOCUMENT_NOT_STORABLE = "document_not_storable"
    QUEUE_UNAVAILABLE = "queue_unavailable"
    JOB_TIMEOUT = "job_timeout"
    CONNECTION_ERROR = "connection_error"
    UNEXPECTED_ERROR = "unexpected_error"


class ProcessingError(Exception):
    """Root of the errors our own processing code raises about an event."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PermanentError(ProcessingError):
    """Retrying cannot help: the event is dead-lettered at once."""


class TransientError(ProcessingError):
    """Retrying may help; ``retry_after_s`` is a lower bound on the delay, if known."""

    def __init__(
        self, code: ErrorCode, message: str, *, retry_after_s: float | None = None
    ) -> None:
        super().__init__(code, message)
        self.retry_after_s = retry_after_s


class DownstreamError(Exception):
    """Root of downstream delivery failures."""


class DownstreamTimeout(DownstreamError):
    """The downstream did not answer in time."""


class DownstreamUnreachable(DownstreamError):
    """The request did not reach the downstream or the connection broke."""


class DownstreamStatusError(DownstreamError):
    """The downstream answered with a status other than 2xx."""

    def __init__(self, status: int, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"downstream answered {status}")
        self.status = status
        self.retry_after_s = retry_after_s
