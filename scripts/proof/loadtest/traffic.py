"""What the load test's simulated couriers send, and how each request is recorded.

Each simulated courier works through shipment lifecycles (created → … →
delivered / returned / cancelled) with ``occurred_at`` increasing along the
lifecycle, so the only terminal event of a shipment is its newest one and no
event is an ``invalid_transition``: every accepted event should succeed,
whatever order the workers apply them in. On top of that:

* **resends** — with probability ``duplicate_ratio`` a request repeats an
  earlier request of the same courier byte for byte (same body, same
  ``webhook-id``, fresh timestamp and signature), as a courier retrying a
  webhook does; the gateway must answer ``200 duplicate``;
* **out-of-order pairs** — with probability ``out_of_order_ratio`` two
  consecutive events of a lifecycle are sent newer first; the older one must
  still be recorded in the shipment's history without changing its status.

The locustfile reads its configuration from ``LOADTEST_*`` variables
(:meth:`LoadConfig.from_env`) and writes one :class:`SentRecord` per request
to a JSON-lines file per process (:class:`Recorder`), so ``gateway loadtest``
checks SC-002/SC-003 against exactly the keys that were acknowledged.
Nothing here imports Locust.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final, Literal, Self

import msgspec
from msgspec import Struct

from shared.contracts import EventType
from shared.settings import SettingsError, SourceConfig, load_settings

__all__ = [
    "LIFECYCLES",
    "EventStream",
    "LoadConfig",
    "Outgoing",
    "PlannedEvent",
    "Recorder",
    "SentRecord",
    "plan_lifecycle",
    "read_records",
    "send_order",
]

E = EventType
LIFECYCLES: Final[tuple[tuple[tuple[EventType, ...], int], ...]] = (
    ((E.CREATED, E.PICKED_UP, E.IN_TRANSIT, E.OUT_FOR_DELIVERY, E.DELIVERED), 6),
    (
        (
            E.CREATED,
            E.PICKED_UP,
            E.IN_TRANSIT,
            E.OUT_FOR_DELIVERY,
            E.DELIVERY_FAILED,
            E.OUT_FOR_DELIVERY,
            E.DELIVERED,
        ),
        2,
    ),
    (
        (
            E.CREATED,
            E.PICKED_UP,
            E.IN_TRANSIT,
            E.OUT_FOR_DELIVERY,
            E.DELIVERY_FAILED,
            E.RETURNED,
        ),
        1,
    ),
    ((E.CREATED, E.CANCELLED), 1),
)
"""Event-type sequences of one shipment, with their relative weights."""

RECORD_PREFIX: Final = "requests-"
Kind = Literal["new", "resend", "out_of_order"]


class PlannedEvent(Struct, frozen=True, kw_only=True):
    """One courier event of a planned lifecycle."""

    event_id: str
    event_type: EventType
    occurred_at: datetime
    shipment_id: str
    order_id: str
    tracking_number: str
    location: tuple[float, float] | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)

    def body(self) -> bytes:
        """The JSON body a courier would POST (SPEC §3.1)."""
        event: dict[str, Any] = {
            "event_id": self.event_id,
            "event_type": self.event_type.value,
            "occurred_at": self.occurred_at.isoformat().replace("+00:00", "Z"),
            "shipment": {
                "id": self.shipment_id,
                "order_id": self.order_id,
                "tracking_number": self.tracking_number,
            },
        }
        if self.location is not None:
            event["location"] = {"lat": self.location[0], "lon": self.location[1]}
        if self.data:
            event["data"] = self.data
        return msgspec.json.encode(event)


class Outgoing(Struct, frozen=True, kw_only=True):
    """One request to send: the exact body and ``webhook-id``, and why it is sent."""

    event_id: str
    shipment_id: str
    msg_id: str
    body: bytes
    kind: Kind


def plan_lifecycle(
    rng: random.Random, prefix: str, serial: int, start: datetime
) -> list[PlannedEvent]:
    """One shipment's events in ``occurred_at`` order, the first at ``start``.

    Steps are 5 to 90 minutes apart (whole seconds), so no two events of a
    shipment share a time and the terminal event is always the newest.
    """
    types = rng.choices([t for t, _ in LIFECYCLES], weights=[w for _, w in LIFECYCLES])[0]
    shipment_id = f"shp_{prefix}_{serial}"
    order_id = f"ord_{prefix}_{serial}"
    tracking = f"1Z{rng.randrange(10**9):09d}"
    events: list[PlannedEvent] = []
    at = start.replace(microsecond=0)
    for step, event_type in enumerate(types):
        location = None
        if event_type not in (E.CREATED, E.CANCELLED) and rng.random() < 0.7:
            location = (round(rng.uniform(47, 55), 5), round(rng.uniform(6, 15), 5))
        data: dict[str, Any] = {}
        if event_type == E.DELIVERED:
            data = {"signed_by": rng.choice(["front door", "neighbour", "reception"])}
        elif event_type == E.DELIVERY_FAILED:
            data = {"reason": rng.choice(["not home", "address not found"]), "attempt": 1}
        events.append(
            PlannedEvent(
                event_id=f"evt_{prefix}_{serial}_{step}",
                event_type=event_type,
                occurred_at=at,
                shipment_id=shipment_id,
                order_id=order_id,
                tracking_number=tracking,
                location=location,
                data=data,
            )
        )
        at += timedelta(seconds=rng.randint(300, 5400))
    return events


def send_order(
    events: list[PlannedEvent], rng: random.Random, out_of_order_ratio: float
) -> list[tuple[PlannedEvent, bool]]:
    """``events`` in sending order: each adjacent pair swapped with ``out_of_order_ratio``.

    The flag marks events sent out of order (both members of a swapped pair).
    A pair never overlaps another.
    """
    order: list[tuple[PlannedEvent, bool]] = []
    index = 0
    while index < len(events):
        if index + 1 < len(events) and rng.random() < out_of_order_ratio:
            order += [(events[index + 1], True), (events[index], True)]
            index += 2
        else:
            order.append((events[index], False))
            index += 1
    return order


class EventStream:
    """The requests of one simulated courier, one :meth:`next` call per request."""

    def __init__(
        self,
        rng: random.Random,
        prefix: str,
        *,
        duplicate_ratio: float,
        out_of_order_ratio: float,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        resend_window: int = 64,
    ) -> None:
        self._rng = rng
        self._prefix = prefix
        self._duplicate_ratio = duplicate_ratio
        self._out_of_order_ratio = out_of_order_ratio
        self._now = now
        self._serial = 0
        self._pending: deque[tuple[PlannedEvent, bool]] = deque()
        self._sent: deque[Outgoing] = deque(maxlen=resend_window)

    def next(self) -> Outgoing:
        """The next request: a resend of an earlier one, or the next planned event."""
        if self._sent and self._rng.random() < self._duplicate_ratio:
            earlier = self._rng.choice(self._sent)
            return msgspec.structs.replace(earlier, kind="resend")
        if not self._pending:
            self._serial += 1
            start = (
                self._now() - timedelta(hours=12) + timedelta(seconds=self._rng.randint(0, 3600))
            )
            lifecycle = plan_lifecycle(self._rng, self._prefix, self._serial, start)
            self._pending.extend(send_order(lifecycle, self._rng, self._out_of_order_ratio))
        event, swapped = self._pending.popleft()
        outgoing = Outgoing(
            event_id=event.event_id,
            shipment_id=event.shipment_id,
            msg_id=f"msg_{event.event_id}",
            body=event.body(),
            kind="out_of_order" if swapped else "new",
        )
        self._sent.append(outgoing)
        return outgoing


class LoadConfig(Struct, frozen=True, kw_only=True):
    """What the locustfile needs, from ``LOADTEST_*`` and the gateway's source variables.

    ``rate_per_s`` is the target request rate of *all* users together
    (0: every user sends as fast as it gets answers).
    """

    source: str
    source_config: SourceConfig
    duplicate_ratio: float = 0.1
    out_of_order_ratio: float = 0.1
    rate_per_s: float = 40.0
    record_dir: Path | None = None
    run_id: str = ""
    seed: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        """Read the configuration; :class:`ValueError` names the variable that is wrong.

        ``GATEWAY_SOURCES`` / ``GATEWAY_SOURCES_FILE`` give the source's secret
        (never argv); ``LOADTEST_SOURCE`` picks the source (default: the first
        configured one).
        """
        names = ("GATEWAY_SOURCES", "GATEWAY_SOURCES_FILE")
        try:
            sources = load_settings({k: environ[k] for k in names if k in environ}).sources
        except SettingsError as exc:
            raise ValueError(str(exc)) from exc
        if not sources:
            raise ValueError("GATEWAY_SOURCES_FILE: no source configured to sign for")
        source = environ.get("LOADTEST_SOURCE") or next(iter(sources))
        if source not in sources:
            raise ValueError(f"LOADTEST_SOURCE: {source!r} is not a configured source")
        record_dir = environ.get("LOADTEST_RECORD_DIR")
        seed = environ.get("LOADTEST_SEED")
        return cls(
            source=source,
            source_config=sources[source],
            duplicate_ratio=_ratio(environ, "LOADTEST_DUPLICATE_RATIO", 0.1),
            out_of_order_ratio=_ratio(environ, "LOADTEST_OUT_OF_ORDER_RATIO", 0.1),
            rate_per_s=_number(environ, "LOADTEST_RATE", 40.0),
            record_dir=Path(record_dir) if record_dir else None,
            run_id=environ.get("LOADTEST_RUN_ID") or uuid.uuid4().hex[:6],
            seed=int(seed) if seed else None,
        )


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name}: must not be negative, got {raw!r}")
    return value


def _ratio(environ: Mapping[str, str], name: str, default: float) -> float:
    value = _number(environ, name, default)
    if value > 1:
        raise ValueError(f"{name}: must be between 0 and 1, got {value:g}")
    return value


class SentRecord(Struct, frozen=True, kw_only=True):
    """One request as the load generator saw it.

    ``key`` is the idempotency key, ``shipment`` the ``active_shipments``
    ``_id`` (both ``{source}:{id}``); ``status`` 0 means no HTTP answer;
    ``ms`` is the latency Locust measured.
    """

    key: str
    shipment: str
    status: int
    kind: Kind
    ms: float


_record_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(SentRecord)


class Recorder:
    """Appends :class:`SentRecord` lines to ``requests-<pid>.jsonl`` in ``directory``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{RECORD_PREFIX}{os.getpid()}.jsonl"
        self._file: IO[bytes] | None = self.path.open("ab")

    def write(self, record: SentRecord) -> None:
        if self._file is not None:
            self._file.write(_record_encoder.encode(record) + b"\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_records(directory: Path) -> list[SentRecord]:
    """Every record the load generator's processes wrote to ``directory``."""
    records: list[SentRecord] = []
    for path in sorted(directory.glob(f"{RECORD_PREFIX}*.jsonl")):
        records.extend(_decode_lines(path.read_bytes().splitlines()))
    return records


def _decode_lines(lines: Iterable[bytes]) -> Iterable[SentRecord]:
    for line in lines:
        if line.strip():
            yield _record_decoder.decode(line)
