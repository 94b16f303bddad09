"""Delivery of shipment updates to ``GATEWAY_DOWNSTREAM_URL`` (docs/contract.md §4 step 3).

One signed ``POST`` per processed event, Standard Webhooks scheme with
``webhook-id`` = the idempotency key, so the receiver can drop repeats: a
delivery is at-least-once (a worker that dies after the downstream answered
but before it recorded success delivers again).

httpx errors are translated here into :mod:`gateway_worker.errors` types; the
response status is left to the classifier.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import httpx
import msgspec
from msgspec import Struct

from gateway_worker.errors import DownstreamStatusError, DownstreamTimeout, DownstreamUnreachable
from shared.contracts import CourierEvent, Location, QueuedEvent, Shipment
from shared.signing import signed_headers

__all__ = ["Deliverer", "Downstream", "ShipmentUpdate", "parse_retry_after", "shipment_update"]


class ShipmentUpdate(Struct, frozen=True, kw_only=True):
    """The JSON body POSTed downstream.

    ``status`` is the shipment's status after this event (which, for an event
    older than the newest known one, is not the event's own status).
    """

    idempotency_key: str
    source: str
    event_id: str
    event_type: str
    occurred_at: datetime
    shipment: Shipment
    status: str
    location: Location | None
    data: msgspec.Raw
    """The courier's ``data`` object byte-exact, as it arrived."""


class Deliverer(Protocol):
    """Something that delivers one processed event downstream."""

    async def deliver(self, queued: QueuedEvent, status: str, event: CourierEvent) -> None:
        """Deliver ``event`` (``queued``'s, normalised), or raise a ``DownstreamError``."""
        ...


def shipment_update(queued: QueuedEvent, status: str, event: CourierEvent) -> ShipmentUpdate:
    """The body for ``queued`` (its canonical ``event``) when the shipment is now ``status``.

    For a carrier's event (docs/contract.md §3.4) the shipment id is the tracking
    number, ``order_id`` is empty when the carrier sent none, and ``data`` is the
    carrier's body.
    """
    return ShipmentUpdate(
        idempotency_key=queued.idempotency_key,
        source=queued.source,
        event_id=event.event_id,
        event_type=event.event_type.value,
        occurred_at=event.occurred_at,
        shipment=event.shipment,
        status=status,
        location=event.location,
        data=event.data,
    )


_encoder = msgspec.json.Encoder()


class Downstream:
    """Signed deliveries through one shared :class:`httpx.AsyncClient`."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        secret: str,
        *,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._url = url
        self._secret = secret
        self._timeout_s = timeout_s
        self._clock = clock

    async def deliver(self, queued: QueuedEvent, status: str, event: CourierEvent) -> None:
        """POST the update; return on 2xx, raise a ``DownstreamError`` otherwise."""
        body = _encoder.encode(shipment_update(queued, status, event))
        now = self._clock()
        headers = {
            "content-type": "application/json",
            **signed_headers(self._secret, queued.idempotency_key, body, now),
        }
        try:
            response = await self._client.post(
                self._url, content=body, headers=headers, timeout=self._timeout_s
            )
        except httpx.TimeoutException as exc:
            # Messages never include the URL: it may carry credentials.
            raise DownstreamTimeout(
                f"no answer within {self._timeout_s:g} s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise DownstreamUnreachable(f"delivery failed: {type(exc).__name__}") from exc
        if 200 <= response.status_code < 300:
            return
        retry_after = response.headers.get("retry-after")
        raise DownstreamStatusError(
            response.status_code,
            retry_after_s=None if retry_after is None else parse_retry_after(retry_after, now),
        )


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds from ``now`` (Unix time) that a ``Retry-After`` value asks for.

    Accepts delta-seconds and HTTP dates (RFC 9110 §10.2.3); ``None`` for
    anything else. A date in the past means 0.
    """
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)
