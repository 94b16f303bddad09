"""``gateway demo``: a scripted mix of events against a running stack.

Sends a new event, a duplicate, an out-of-order pair, a tracking update (and
its resend) in the dialect of each configured carrier source (EasyPost, UPS,
AfterShip in the stack ``gateway dev`` starts), an event whose downstream
delivery fails transiently twice (when a mock downstream is reachable), one that
fails permanently (``order_mismatch``), a forged signature and an invalid event;
waits for every accepted event to reach a terminal state and prints what
happened to each. Exits 1 if anything ended differently than expected, so it
doubles as a smoke test.

It reads the outcome from MongoDB (``GATEWAY_MONGO_URL`` / ``GATEWAY_MONGO_DB``)
and signs with the source's configured secret (``GATEWAY_SOURCES[_FILE]``):
``gateway dev`` prints a ``stack.env`` file that sets all of them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import httpx
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from scripts.commands.sign import sign_body
from scripts.traffic.carriers import CARRIER_ADAPTERS, render
from scripts.traffic.events import PlannedEvent
from scripts.traffic.observe import Observer
from shared.contracts import EventType
from shared.settings import Settings, SourceConfig
from shared.storage.dead_letters import DeadLetters
from shared.storage.events import ProcessedEvents
from shared.storage.mongo import open_mongo
from shared.storage.shipments import Shipments

__all__ = ["Step", "demo_command", "run_demo"]


@dataclass
class Step:
    """One request of the script and what we expect of it."""

    scenario: str
    event_type: str
    shipment_id: str
    order_id: str
    occurred_at: datetime
    expect_http: int
    expect_state: str | None  # None: not queued, nothing to wait for
    event_id: str = field(default_factory=lambda: f"evt_{uuid.uuid4().hex[:10]}")
    forge_signature: bool = False
    invalid: bool = False
    source: str | None = None
    """A carrier source this step posts to (default: the demo's canonical source)."""
    raw: bytes | None = None
    """The carrier's body of a carrier step (``event_id``/``shipment_id`` are its key's)."""
    http: int | None = None
    state: str = "—"
    attempts: int = 0
    detail: str = ""

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw
        event: dict[str, Any] = {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "occurred_at": self.occurred_at.isoformat(),
            "shipment": {"id": self.shipment_id, "order_id": self.order_id},
        }
        if self.invalid:
            event["location"] = {"lat": 123.0, "lon": 0.0}
        return json.dumps(event).encode()

    @property
    def ok(self) -> bool:
        http_ok = self.http == self.expect_http
        return http_ok and (self.expect_state is None or self.state == self.expect_state)


class _Demo:
    def __init__(
        self,
        api_url: str,
        source: str,
        configs: Mapping[str, SourceConfig],
        http: httpx.AsyncClient,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.source = source
        self.configs = configs
        self.http = http

    async def send(self, step: Step, body: bytes | None = None) -> None:
        payload = body if body is not None else step.body()
        source = step.source or self.source
        headers = sign_body(self.configs[source], payload, now=time.time())
        if step.forge_signature:
            headers = {
                k: (v[:-6] + "AAAAA=" if k == "webhook-signature" else v)
                for k, v in headers.items()
            }
        headers["content-type"] = "application/json"
        response = await self.http.post(
            f"{self.api_url}/v1/events/{source}", content=payload, headers=headers
        )
        step.http = response.status_code
        answer = response.json()
        step.detail = answer.get("code") or answer.get("status", "")


async def run_demo(
    settings: Settings,
    *,
    api_url: str,
    source: str,
    mock_url: str | None,
    timeout_s: float = 90.0,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Step]:
    """Run the script; return every step with what happened to it."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    tag = uuid.uuid4().hex[:6]
    ship_a, ship_b, ship_c = (f"shp_demo_{tag}_{n}" for n in "abc")
    order_a, order_b, order_c = (f"ord_demo_{tag}_{n}" for n in "abc")
    new = Step("new event", "shipment.created", ship_a, order_a, base, 202, "succeeded")
    duplicate = Step(
        "same event again", "shipment.created", ship_a, order_a, base, 200, "succeeded"
    )
    duplicate.event_id = new.event_id
    newer = Step(
        "out of order: newer first",
        "shipment.in_transit",
        ship_b,
        order_b,
        base + timedelta(hours=2),
        202,
        "succeeded",
    )
    older = Step(
        "out of order: older second",
        "shipment.picked_up",
        ship_b,
        order_b,
        base + timedelta(hours=1),
        202,
        "succeeded",
    )
    forged = Step(
        "forged signature",
        "shipment.created",
        ship_c,
        order_c,
        base,
        401,
        None,
        forge_signature=True,
    )
    invalid = Step(
        "invalid event (lat 123)",
        "shipment.created",
        ship_c,
        order_c,
        base,
        422,
        None,
        invalid=True,
    )
    transient = Step(
        "downstream 503 twice", "shipment.created", ship_c, order_c, base, 202, "succeeded"
    )
    permanent = Step(
        "order_id mismatch",
        "shipment.delivered",
        ship_b,
        "ord_someone_else",
        base + timedelta(hours=3),
        202,
        "dead_lettered",
    )
    steps = [new, duplicate, newer, older, forged, invalid]
    carrier_steps = _carrier_steps(settings, base, tag)

    mongo = open_mongo(settings.mongo_url)
    db = mongo[settings.mongo_db]
    events, shipments, dead_letters = ProcessedEvents(db), Shipments(db), DeadLetters(db)
    observer = Observer(db, Redis.from_url(settings.redis_url), settings.queue_name)
    mock = httpx.AsyncClient(base_url=mock_url, timeout=10) if mock_url else None
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            demo = _Demo(api_url, source, settings.sources, http)
            progress("sending new, duplicate, out-of-order, forged and invalid events")
            await demo.send(new)
            await demo.send(duplicate, new.body())
            for step in (newer, older, forged, invalid):
                await demo.send(step)
            if carrier_steps:
                names = ", ".join(sorted({s.source or "" for s in carrier_steps}))
                progress(f"sending carrier tracking updates and their resends ({names})")
                for step in carrier_steps:
                    await demo.send(step)
                steps += carrier_steps
            await _wait_terminal(observer, source, steps, timeout_s)
            if mock is not None and await _control(mock, fail_first=2):
                progress("made the downstream fail each new key's first 2 deliveries")
                try:
                    await demo.send(transient)
                    steps.append(transient)
                    await _wait_terminal(observer, source, steps, timeout_s)
                finally:
                    await _control(mock, fail_first=0)
            else:
                progress("no mock downstream to control: skipping the transient-failure scenario")
            progress("sending an event whose order_id contradicts its shipment")
            await demo.send(permanent)
            steps.append(permanent)
            await _wait_terminal(observer, source, steps, timeout_s)
        for step in steps:
            await _describe(step, source, events, shipments, dead_letters)
    finally:
        if mock is not None:
            await mock.aclose()
        await observer.redis.aclose()
        await mongo.close()
    return steps


def _carrier_steps(settings: Settings, base: datetime, tag: str) -> list[Step]:
    """For each configured carrier the traffic speaks: a tracking update, then its resend."""
    steps: list[Step] = []
    for number, (name, config) in enumerate(settings.sources.items()):
        if config.kind not in CARRIER_ADAPTERS:
            continue
        planned = PlannedEvent(
            event_id=f"evt_demo_{tag}_{name}",
            event_type=EventType.PICKED_UP,
            occurred_at=base + timedelta(minutes=number),
            shipment_id=f"shp_demo_{tag}_{name}",
            order_id=f"ord_demo_{tag}_{name}",
            tracking_number="",
        )
        rendered = render(planned, config.kind)
        for scenario, http in ((f"{config.kind} tracking update", 202), ("… sent again", 200)):
            steps.append(
                Step(
                    scenario,
                    planned.event_type.value,
                    rendered.shipment_id,
                    planned.order_id,
                    planned.occurred_at,
                    http,
                    "succeeded",
                    event_id=rendered.event_id,
                    source=name,
                    raw=rendered.body,
                )
            )
    return steps


async def _control(mock: httpx.AsyncClient, **rules: int) -> bool:
    try:
        response = await mock.post("/control", json=rules)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def _wait_terminal(
    observer: Observer, source: str, steps: list[Step], timeout_s: float
) -> None:
    queued = [s for s in steps if s.expect_state is not None and s.http in (200, 202)]
    keys = {f"{step.source or source}:{step.event_id}" for step in queued}
    await observer.drain(keys, timeout_s=timeout_s, wait_for_queue=False, poll_s=0.2)


async def _describe(
    step: Step,
    source: str,
    events: ProcessedEvents,
    shipments: Shipments,
    dead_letters: DeadLetters,
) -> None:
    if step.http not in (200, 202):
        step.state = "not queued"
        return
    source = step.source or source
    key = f"{source}:{step.event_id}"
    document = await events.get(key)
    step.state = "not processed" if document is None else document.status.value
    step.attempts = 0 if document is None else document.attempts
    if step.state == "dead_lettered":
        letter = await dead_letters.get(key)
        step.detail = "-" if letter is None else f"{letter.reason}: {letter.error.code}"
    else:
        shipment = await shipments.get(source, step.shipment_id) or {}
        history = [entry.get("event_id") for entry in shipment.get("history", [])]
        step.detail = f"shipment {shipment.get('status')}, {len(history)} in history"
        if step.attempts:
            step.detail += f", {step.attempts} failed attempt(s) before success"


def _table(steps: list[Step]) -> Table:
    table = Table(title="gateway demo")
    for column in ("scenario", "HTTP", "final state", "detail", "as expected"):
        table.add_column(column)
    for step in steps:
        table.add_row(
            step.scenario,
            str(step.http),
            step.state,
            step.detail,
            "yes" if step.ok else "[red]NO[/red]",
        )
    return table


@click.command("demo")
@click.option("--url", "api_url", help="API base URL (default http://127.0.0.1:$GATEWAY_PORT).")
@click.option(
    "--source",
    help="Canonical source to send as (default: the first configured one); every "
    "configured carrier source gets its own tracking update too.",
)
@click.option(
    "--mock-url",
    envvar="GATEWAY_MOCK_DOWNSTREAM_URL",
    help="Mock downstream base URL (also GATEWAY_MOCK_DOWNSTREAM_URL, which `gateway dev` "
    "writes to stack.env); the transient scenario needs it.",
)
@click.option(
    "--timeout", "timeout_s", default=90.0, show_default=True, help="Seconds to wait per phase."
)
def demo_command(
    api_url: str | None, source: str | None, mock_url: str | None, timeout_s: float
) -> None:
    """Send a scripted mix of events to a running stack and show what happened to each."""
    from shared.settings import settings_from_env

    settings = settings_from_env()
    if not settings.sources:
        raise click.UsageError("no source configured (GATEWAY_SOURCES or GATEWAY_SOURCES_FILE)")
    source = source or next(iter(settings.sources))
    if source not in settings.sources:
        raise click.UsageError(f"source {source!r} is not configured")
    console = Console()
    steps = asyncio.run(
        run_demo(
            settings,
            api_url=api_url or f"http://127.0.0.1:{settings.port}",
            source=source,
            mock_url=mock_url,
            timeout_s=timeout_s,
            progress=lambda message: console.print(f"[dim]… {message}[/dim]"),
        )
    )
    console.print(_table(steps))
    if not all(step.ok for step in steps):
        raise SystemExit(1)
