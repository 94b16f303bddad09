"""The couriers of ``gateway chaos``: a steady stream of signed events, retried like a courier.

:class:`ChaosDriver` sends events at a fixed rate (open loop: a slow or failing
answer never delays the next event) and records every answer. Each event is
signed at the moment it is sent, with a fresh timestamp, as a courier's
webhook sender does. An answer that asks for a retry — 503, another 5xx, 408,
429, a timeout or a connection error — is retried with jittered exponential
backoff (``Retry-After`` honoured as a floor) until a final answer or until
the courier gives up (``give_up_s`` after the first send). Only keys that
finally got 202 or 200 count as accepted; the rest are reported, but they are
not the gateway's responsibility.

The events are the shared traffic generator's shipment lifecycles
(:class:`scripts.traffic.events.ShipmentPlanner`) with ``occurred_at`` rising
along each lifecycle and its only terminal event last, so whatever order
retries and workers apply them in, none is an ``invalid_transition``: every
accepted event should end ``succeeded``. Lifecycles of many shipments are
interleaved. A share of requests (``resend_ratio``) repeats an earlier,
already accepted request byte for byte (same body and ``webhook-id``): the
gateway must answer 200 duplicate.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

import httpx
import msgspec
from msgspec import Struct

from scripts.commands.sign import sign_body
from scripts.traffic.carriers import render
from scripts.traffic.events import ShipmentPlanner
from shared.settings import SourceConfig

__all__ = [
    "Answer",
    "ChaosDriver",
    "CourierRetry",
    "DriverResult",
    "Resend",
    "SentEvent",
]

_RETRIED_STATUSES: Final = frozenset({408, 425, 429})
Outcome = Literal["accepted", "duplicate", "rejected", "gave_up"]


class Answer(Struct, frozen=True, kw_only=True):
    """One request's answer: an HTTP status, or the name of the transport error."""

    sent_at: float
    at: float
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status in (200, 202)


class SentEvent(Struct, kw_only=True):
    """Everything that happened to one event the couriers sent (wall-clock times)."""

    key: str
    event_id: str
    event_type: str
    occurred_at: datetime
    shipment_id: str
    answers: list[Answer] = msgspec.field(default_factory=list)
    outcome: Outcome | None = None

    @property
    def accepted(self) -> bool:
        """Finally answered 202 or 200: the gateway is responsible for it now."""
        return self.outcome in ("accepted", "duplicate")

    @property
    def acked_at(self) -> float | None:
        return next((a.at for a in self.answers if a.ok), None)


class Resend(Struct, frozen=True, kw_only=True):
    """A byte-for-byte repeat of an accepted request, and its answer."""

    key: str
    answer: Answer


class DriverResult(Struct, kw_only=True):
    """What the couriers sent and what they were told."""

    started_at: float
    stopped_at: float
    events: list[SentEvent]
    resends: list[Resend]
    late_sends: int
    """Sends that left more than a second behind schedule (the driver itself was starved)."""

    def answer_counts(self) -> dict[str, int]:
        """Every answer of every request (retries included), by status or error name."""
        counts: Counter[str] = Counter()
        for event in self.events:
            counts.update(_label(a) for a in event.answers)
        counts.update(_label(r.answer) for r in self.resends)
        return dict(sorted(counts.items()))


def _label(answer: Answer) -> str:
    return str(answer.status) if answer.status is not None else (answer.error or "?")


@dataclass(frozen=True)
class CourierRetry:
    """How a courier retries: jittered exponential backoff, ``Retry-After`` as a floor."""

    base_s: float = 0.5
    cap_s: float = 5.0
    give_up_s: float = 120.0

    def delay(self, retry: int, retry_after_s: float | None, rng: random.Random) -> float:
        bound = min(self.cap_s, self.base_s * 2 ** (retry - 1))
        delay = rng.uniform(bound / 2, bound)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.cap_s))
        return delay


@dataclass
class ChaosDriver:
    """Sends ``rate`` events per second to ``api_url``/v1/events/{source} until stopped.

    Each shipment's events go to one of ``sources`` (chosen by its id), in that
    source's dialect (:mod:`scripts.traffic.carriers`), signed as its adapter
    expects: the traffic is the adapter mix of the chaos stack.
    """

    api_url: str
    sources: Mapping[str, SourceConfig]
    rate: float
    seed: int = 1
    resend_ratio: float = 0.05
    retry: CourierRetry = field(default_factory=CourierRetry)
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._planner = ShipmentPlanner(random.Random(self.seed + 1), uuid.uuid4().hex[:6])
        self._events: list[SentEvent] = []
        self._bodies: dict[str, bytes] = {}
        self._accepted: list[str] = []
        self._resends: list[Resend] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._late = 0
        # Requests wait here, not in httpcore's pool: with many requests queued in the
        # pool (an API slowed by a fault), httpcore 1.0 spends its CPU re-scanning
        # them and the driver stops sending (seen in the Sentinel failover run).
        self._in_flight = asyncio.Semaphore(_MAX_IN_FLIGHT)

    @property
    def events(self) -> list[SentEvent]:
        """Events sent so far (live view, for progress lines)."""
        return self._events

    async def run(self, stop: asyncio.Event) -> DriverResult:
        """Send until ``stop`` is set, then wait for every event's final answer."""
        limits = httpx.Limits(max_connections=_MAX_IN_FLIGHT, max_keepalive_connections=50)
        async with httpx.AsyncClient(
            base_url=self.api_url, timeout=self.request_timeout_s, limits=limits
        ) as client:
            started = time.time()
            origin = time.monotonic()
            sent = 0
            while not stop.is_set():
                due = origin + sent / self.rate
                wait = due - time.monotonic()
                if wait > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), wait)
                    except TimeoutError:
                        pass
                    else:
                        break
                elif wait < -1:
                    self._late += 1
                sent += 1
                self._spawn(self._send_one(client))
            stopped = time.time()
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
                # A task already done when gathered leaves the set only in its done
                # callback, and awaiting a gather of done tasks never yields to the
                # loop: without this the driver spun forever (seen after a chaos run).
                await asyncio.sleep(0)
        return DriverResult(
            started_at=started,
            stopped_at=stopped,
            events=self._events,
            resends=self._resends,
            late_sends=self._late,
        )

    def _spawn(self, coroutine: Coroutine[None, None, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_one(self, client: httpx.AsyncClient) -> None:
        if self._accepted and self._rng.random() < self.resend_ratio:
            key = self._rng.choice(self._accepted)
            answer = await self._post(client, key, self._bodies[key])
            self._resends.append(Resend(key=key, answer=answer))
            return
        planned = self._planner.next()
        names = list(self.sources)
        source = names[zlib.crc32(planned.shipment_id.encode()) % len(names)]
        rendered = render(planned, self.sources[source].kind)
        key = f"{source}:{rendered.event_id}"
        body = rendered.body
        self._bodies[key] = body
        event = SentEvent(
            key=key,
            event_id=rendered.event_id,
            event_type=planned.event_type.value,
            occurred_at=planned.occurred_at,
            shipment_id=rendered.shipment_id,
        )
        self._events.append(event)
        first = time.monotonic()
        retries = 0
        while True:
            answer = await self._post(client, key, body)
            event.answers.append(answer)
            if answer.ok:
                event.outcome = "accepted" if answer.status == 202 else "duplicate"
                self._accepted.append(key)
                return
            if answer.status is not None and not _retryable(answer.status):
                event.outcome = "rejected"
                return
            retries += 1
            delay = self.retry.delay(retries, answer.retry_after_s, self._rng)
            if time.monotonic() + delay - first > self.retry.give_up_s:
                event.outcome = "gave_up"
                return
            await asyncio.sleep(delay)

    async def _post(self, client: httpx.AsyncClient, key: str, body: bytes) -> Answer:
        # webhook-id = the idempotency key's event id: a resend repeats it exactly.
        source, _, msg_id = key.partition(":")
        headers = sign_body(self.sources[source], body, now=time.time(), msg_id=msg_id)
        headers["content-type"] = "application/json"
        sent_at = time.time()
        try:
            async with self._in_flight:
                response = await client.post(f"/v1/events/{source}", content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Answer(sent_at=sent_at, at=time.time(), error=type(exc).__name__)
        retry_after = response.headers.get("retry-after", "")
        return Answer(
            sent_at=sent_at,
            at=time.time(),
            status=response.status_code,
            retry_after_s=float(retry_after) if retry_after.isdigit() else None,
        )


_MAX_IN_FLIGHT = 200


def _retryable(status: int) -> bool:
    return status >= 500 or status in _RETRIED_STATUSES
