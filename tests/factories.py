"""Things tests build: secrets, events, signed courier requests, stored documents.

Plain functions and constants, imported by name (``from tests.factories import
make_event``); the fixtures that start services are in ``tests/plugins/``.

Signed requests: Standard Webhooks signatures come from the third-party
``standardwebhooks`` package (the reference implementation), and ``hex``
signatures from the standard library, so the API is tested against signers
that are not our code. Bodies that are not UTF-8 cannot go through
``standardwebhooks`` (it signs ``str``); :func:`our_headers` signs those with
``shared.signing``, which ``tests/shared/test_signing.py`` proves
byte-identical to the reference.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from pymongo.asynchronous.database import AsyncDatabase
from standardwebhooks import Webhook

from shared.contracts import CourierEvent, EventType, QueuedEvent, ReplayRef, Shipment
from shared.settings import Settings
from shared.signing import generate_secret, signed_headers
from shared.storage.dead_letters import DeadLetterReason, DeadLetters
from shared.storage.events import AttemptRecord
from shared.storage.mongo import Document

# Test-only secrets, generated fresh for every run.
TEST_SECRETS = (generate_secret(), generate_secret())
TEST_HEX_SECRET = "test-only-" + uuid.uuid4().hex
DOWNSTREAM_SECRET = generate_secret()

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
KEY = "acme:evt_1"
"""The idempotency key the storage tests store under."""

JSON = {"content-type": "application/json"}


DELIVERY_WITH_A_RETRY = (
    EventType.CREATED,
    EventType.PICKED_UP,
    EventType.IN_TRANSIT,
    EventType.OUT_FOR_DELIVERY,
    EventType.DELIVERY_FAILED,
    EventType.OUT_FOR_DELIVERY,
    EventType.DELIVERED,
)
"""One shipment's whole life, with a failed delivery attempt before the delivery."""

# ---- queued events -----------------------------------------------------------------------------


def make_event(
    event_id: str = "evt_1",
    event_type: EventType = EventType.PICKED_UP,
    *,
    occurred_at: datetime = T0,
    shipment_id: str = "shp_1",
    order_id: str = "ord_1",
    source: str = "acme",
    replay: ReplayRef | None = None,
) -> QueuedEvent:
    """A :class:`QueuedEvent` as the API would enqueue it."""
    event = CourierEvent(
        event_id=event_id,
        event_type=event_type,
        occurred_at=occurred_at,
        shipment=Shipment(id=shipment_id, order_id=order_id, tracking_number="1Z999"),
    )
    return QueuedEvent(
        idempotency_key=f"{source}:{event_id}",
        source=source,
        event_id=event_id,
        body=msgspec.json.encode(event),
        request_id=f"req_{event_id}",
        received_at_ms=int(time.time() * 1000),
        replay=replay,
    )


def queued_with_body(body: bytes, key: str = KEY) -> QueuedEvent:
    """A queued event of ``key`` carrying ``body`` as it is (any bytes, valid or not)."""
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


def payload(queued: QueuedEvent) -> Any:
    """The job argument exactly as arq hands it to the job (MessagePack round trip)."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(queued))


class Clock:
    """A settable clock for lease arithmetic without sleeping."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# ---- signed courier requests -------------------------------------------------------------------


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def event_payload(event_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid courier event as a dict; keyword arguments replace top-level fields."""
    body: dict[str, Any] = {
        "event_id": new_event_id() if event_id is None else event_id,
        "event_type": "shipment.picked_up",
        "occurred_at": "2026-11-22T10:15:00+01:00",
        "shipment": {"id": "shp_123", "order_id": "ord_9", "tracking_number": "1Z999"},
        "location": {"lat": 52.52, "lon": 13.4},
        "data": {"hub": "BER", "items": [{"sku": "A-1", "qty": 2}]},
    }
    body.update(overrides)
    return body


def event_body(event_id: str | None = None, **overrides: Any) -> bytes:
    """A valid courier event, serialized compactly."""
    return json.dumps(event_payload(event_id, **overrides), separators=(",", ":")).encode()


def reference_signature(
    body: bytes, secret: str = TEST_SECRETS[0], *, msg_id: str, timestamp: int
) -> str:
    """``v1,<base64>`` computed by the ``standardwebhooks`` reference package."""
    signed: str = Webhook(secret).sign(
        msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode()
    )
    return signed


def reference_headers(
    body: bytes,
    secret: str = TEST_SECRETS[0],
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Content type plus the three Standard Webhooks headers, signed by the reference package."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        **JSON,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": reference_signature(body, secret, msg_id=msg_id, timestamp=timestamp),
    }


def our_headers(body: bytes, secret: str = TEST_SECRETS[0]) -> dict[str, str]:
    """Content type plus Standard Webhooks headers signed by ``shared.signing`` (any bytes)."""
    return {**JSON, **signed_headers(secret, f"msg_{uuid.uuid4().hex}", body, time.time())}


def hex_headers(body: bytes, secret: str = TEST_HEX_SECRET) -> dict[str, str]:
    """Content type plus the legacy ``X-Signature: sha256=<hex>``, computed with hmac directly."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {**JSON, "X-Signature": f"sha256={digest}"}


# ---- stored documents and process environments -------------------------------------------------


async def write_letter(
    db: AsyncDatabase[Document],
    event_id: str,
    *,
    at: datetime = T0,
    source: str = "acme",
    code: str = "downstream_unavailable",
    reason: DeadLetterReason = DeadLetterReason.RETRIES_EXHAUSTED,
    event_type: EventType = EventType.PICKED_UP,
) -> str:
    """Write a dead letter with the worker's own storage call; its key."""
    queued = make_event(event_id, event_type, source=source)
    attempt = AttemptRecord(
        attempt=1, at=at, code=code, message=f"{code} happened", transient=True, duration_ms=3
    )
    await DeadLetters(db).dead_letter(
        queued,
        shipment_id=queued.event.shipment.id,
        event_type=event_type.value,
        reason=reason,
        code=code,
        message=f"{code} happened",
        attempts=[attempt],
        now=at,
    )
    return queued.idempotency_key


async def write_permanent_letter(
    db: AsyncDatabase[Document], event_id: str, code: str = "order_mismatch", *, at: datetime = T0
) -> str:
    """Write a dead letter for the permanent error ``code``; its key."""
    return await write_letter(db, event_id, at=at, code=code, reason=DeadLetterReason.PERMANENT)


async def write_letters(
    db: AsyncDatabase[Document], count: int, *, every: timedelta = timedelta(seconds=1)
) -> list[str]:
    """Write dead letters ``evt_0`` … ``evt_{count-1}``, ``every`` apart from ``T0``; their keys."""
    return [await write_letter(db, f"evt_{i}", at=T0 + i * every) for i in range(count)]


async def write_filter_letters(db: AsyncDatabase[Document]) -> tuple[str, str, str]:
    """Three dead letters every filter tells apart; their keys.

    ``acme:evt_a`` at ``T0`` (downstream_unavailable, retries exhausted);
    ``acme:evt_b`` ten minutes later (order_mismatch, permanent);
    ``legacy:evt_c`` twenty minutes later (downstream_unavailable, retries exhausted).
    """
    a = await write_letter(db, "evt_a", at=T0)
    b = await write_permanent_letter(db, "evt_b", at=T0 + timedelta(minutes=10))
    c = await write_letter(db, "evt_c", at=T0 + timedelta(minutes=20), source="legacy")
    return a, b, c


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``GATEWAY_*`` variables that ``load_settings`` turns back into ``settings``."""
    env: dict[str, str] = {}
    for name in Settings.__struct_fields__:
        value = getattr(settings, name)
        if value is None:
            continue
        variable = "GATEWAY_" + name.upper()
        if name == "sources":
            env[variable] = msgspec.json.encode(value).decode()
        else:
            env[variable] = str(value)
    return env
