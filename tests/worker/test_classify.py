"""One classifier decides, for every failure kind of docs/contract.md §4, if it is retried."""

from __future__ import annotations

import msgspec
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway_worker import errors
from gateway_worker.classify import classify
from gateway_worker.errors import DownstreamStatusError, ErrorCode
from shared.queue import QueueUnavailable
from shared.storage.errors import DocumentNotStorable, StoreRejected, StoreUnavailable


def _undecodable() -> msgspec.ValidationError:
    try:
        msgspec.convert({"source": 1}, dict[str, str])
    except msgspec.ValidationError as exc:
        return exc
    raise AssertionError("conversion should have failed")


C = ErrorCode
TRANSIENT_HTTP = (408, 425, 429, 500, 502, 503, 504, 599)
"""Downstream answers to retry: the 4xx that mean "later", and every 5xx (a sample)."""
PERMANENT_HTTP = (400, 401, 403, 404, 409, 410, 422, 301)
"""Downstream answers not to retry: every other 4xx (a sample), and a redirect."""

TABLE: list[tuple[str, BaseException, bool, ErrorCode]] = [
    # MongoDB network / timeout / not-primary errors reach us translated.
    (
        "mongo network error",
        StoreUnavailable("claim: AutoReconnect: reset"),
        True,
        C.STORE_UNAVAILABLE,
    ),
    (
        "mongo timeout",
        StoreUnavailable("claim: NetworkTimeout: timed out"),
        True,
        C.STORE_UNAVAILABLE,
    ),
    ("mongo not primary", StoreUnavailable("claim: NotPrimaryError"), True, C.STORE_UNAVAILABLE),
    ("mongo refusal", StoreRejected("apply: OperationFailure: bad"), False, C.STORE_REJECTED),
    (
        "unencodable document",
        DocumentNotStorable(
            "dead_letter: OverflowError: MongoDB can only handle up to 8-byte ints"
        ),
        False,
        C.DOCUMENT_NOT_STORABLE,
    ),
    ("redis connection error", RedisConnectionError("refused"), True, C.QUEUE_UNAVAILABLE),
    ("redis timeout", RedisTimeoutError("slow"), True, C.QUEUE_UNAVAILABLE),
    ("redis error reply", ResponseError("LOADING"), True, C.QUEUE_UNAVAILABLE),
    ("queue unavailable", QueueUnavailable("no EXEC"), True, C.QUEUE_UNAVAILABLE),
    ("downstream timeout", errors.DownstreamTimeout("no answer"), True, C.DOWNSTREAM_TIMEOUT),
    (
        "downstream refused",
        errors.DownstreamUnreachable("ConnectError"),
        True,
        C.DOWNSTREAM_UNREACHABLE,
    ),
    ("plain connection error", ConnectionResetError("reset"), True, C.CONNECTION_ERROR),
    *[
        (f"http {status}", DownstreamStatusError(status), True, C.DOWNSTREAM_UNAVAILABLE)
        for status in TRANSIENT_HTTP
    ],
    *[
        (f"http {status}", DownstreamStatusError(status), False, C.DOWNSTREAM_REJECTED)
        for status in PERMANENT_HTTP
    ],
    (
        "invalid transition",
        errors.PermanentError(ErrorCode.INVALID_TRANSITION, "delivered is terminal"),
        False,
        C.INVALID_TRANSITION,
    ),
    (
        "order mismatch",
        errors.PermanentError(ErrorCode.ORDER_MISMATCH, "other order"),
        False,
        ErrorCode.ORDER_MISMATCH,
    ),
    ("undecodable payload", _undecodable(), False, C.UNDECODABLE_PAYLOAD),
    ("undecodable bytes", msgspec.DecodeError("truncated"), False, C.UNDECODABLE_PAYLOAD),
    (
        "own job deadline",
        errors.TransientError(ErrorCode.JOB_TIMEOUT, "took too long"),
        True,
        ErrorCode.JOB_TIMEOUT,
    ),
    ("unknown exception", RuntimeError("bug"), True, C.UNEXPECTED_ERROR),
    ("unknown key error", KeyError("x"), True, C.UNEXPECTED_ERROR),
]


@pytest.mark.parametrize(
    ("exc", "transient", "code"),
    [case[1:] for case in TABLE],
    ids=[case[0] for case in TABLE],
)
def test_every_error_kind_of_the_spec_is_classified(
    exc: BaseException, transient: bool, code: ErrorCode
) -> None:
    result = classify(exc)
    assert (result.transient, result.code) == (transient, code)
    assert result.message


def test_every_4xx_except_408_425_429_is_permanent_and_every_5xx_transient() -> None:
    for status in range(400, 600):
        result = classify(DownstreamStatusError(status))
        expected = status >= 500 or status in (408, 425, 429)
        assert result.transient is expected, status


def test_retry_after_of_a_transient_answer_is_kept() -> None:
    assert classify(DownstreamStatusError(503, retry_after_s=7.0)).retry_after_s == 7.0
    assert classify(DownstreamStatusError(429, retry_after_s=2.0)).retry_after_s == 2.0


def test_messages_are_bounded() -> None:
    assert len(classify(RuntimeError("x" * 10_000)).message) <= 500


def test_unknown_exception_message_names_its_type() -> None:
    assert classify(ValueError("odd")).message == "ValueError: odd"
