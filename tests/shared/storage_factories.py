"""Documents and records the storage tests build (one key, one clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.contracts import QueuedEvent
from shared.storage.events import AttemptRecord

KEY = "acme:evt_1"
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def queued(body: bytes, key: str = KEY) -> QueuedEvent:
    """A queued event of ``KEY`` carrying ``body``."""
    source, _, event_id = key.partition(":")
    return QueuedEvent(
        idempotency_key=key,
        source=source,
        event_id=event_id,
        body=body,
        request_id="req_1",
        received_at_ms=1_795_000_000_000,
    )


def failure(attempt: int, at_s: float = 0) -> AttemptRecord:
    """A transient failed attempt ``at_s`` after ``T0``."""
    return AttemptRecord(
        attempt=attempt,
        at=T0 + timedelta(seconds=at_s),
        code="downstream_unavailable",
        message="downstream answered 503",
        transient=True,
        duration_ms=12,
        retry_in_ms=40,
    )
