"""Every built-in carrier and both ``generic`` examples through the real stack.

One stack for the module's one test (API app in this loop, a real ``gateway
worker`` process, Redis, the MongoDB-wire server), many cases per carrier:
each carrier's documented example signed the way the carrier documents it
(``tests/shared/adapters/carriers.py``: hashlib/hmac/base64, never the
adapters' own signing code) →

* 202 and the shipment ``{source}:{tracking number}`` at the mapped status;
* the same request again → 200 duplicate, one effect;
* a tampered byte (or, for a static credential, a tampered credential) → 401
  ``signature_invalid``; the signature header absent → 401 ``signature_missing``;
* a status outside the vocabulary → 202, then a dead letter ``unmapped_status``
  keeping the carrier's body byte-exact; after the vocabulary maps it (the
  workers restarted with the new configuration), ``gateway dlq replay`` applies
  it, and a second replay changes nothing.

The source id of each carrier is its name, so the ``generic`` examples run by
configuration alone (docs/carriers.md).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
from pymongo.asynchronous.database import AsyncDatabase

from gateway_api.app import create_app
from scripts.harness.mock_downstream import MockDownstreamClient
from shared.adapters.config import SourceAdapterConfig, parse_source_config
from shared.settings import Settings
from shared.storage.mongo import DEAD_LETTER_EVENTS, PROCESSED_EVENTS, SHIPMENTS, Document
from tests.api.harness import asgi_client, running
from tests.factories import DOWNSTREAM_SECRET
from tests.plugins.worker import WorkerPool, wait_until
from tests.scripts.test_dlq_cli import dlq
from tests.shared.adapters.carriers import CARRIERS, SECRET, Carrier, document, encode, set_path

NEW_STATUS = "ZZ_NOT_YET_MAPPED"
JSON = {"content-type": "application/json"}


def sources(*, mapped: bool) -> dict[str, SourceAdapterConfig]:
    """Every carrier as a source named after it; ``mapped`` adds :data:`NEW_STATUS`."""
    configured = {}
    for carrier in CARRIERS:
        raw: dict[str, Any] = dict(carrier.config)
        if mapped:
            raw["statuses"] = {**raw.get("statuses", {}), NEW_STATUS: carrier.event_type.status}
        configured[carrier.name] = parse_source_config(carrier.name, raw)
    return configured


def signed(carrier: Carrier, body: bytes) -> dict[str, str]:
    return {**JSON, **carrier.sign(body, SECRET, int(time.time()))}


def token_signed(carrier: Carrier) -> bool:
    """A static credential (UPS, the DHL-style example): the body itself is not signed."""
    return carrier.sign(b"{}", SECRET, 0).get(carrier.header) == SECRET


def tampered(carrier: Carrier, body: bytes) -> tuple[bytes, dict[str, str]]:
    headers = signed(carrier, body)
    if token_signed(carrier):
        return body, {**headers, carrier.header: SECRET[:-1] + "X"}
    position = body.index(carrier.tracking_number.encode())
    flipped = body[:position] + bytes([body[position] ^ 1]) + body[position + 1 :]
    return flipped, headers


def with_new_status(carrier: Carrier) -> bytes:
    """The example with a status outside the vocabulary (and, if it has one, a new id)."""
    doc = set_path(document(carrier.example), carrier.status_path, NEW_STATUS)
    if carrier.event_id is not None:
        doc = _replace_value(doc, carrier.event_id, carrier.event_id + "-2")
    return encode(doc)


def _replace_value(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {k: _replace_value(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_value(v, old, new) for v in node]
    if node == old or (isinstance(node, int) and str(node) == old):
        return new
    return node


async def status_of(db: AsyncDatabase[Document], key: str) -> str | None:
    found = await db[PROCESSED_EVENTS].find_one({"_id": key})
    return None if found is None else str(found["status"])


async def wait_status(db: AsyncDatabase[Document], key: str, wanted: str) -> None:
    async def reached() -> bool:
        return await status_of(db, key) == wanted

    await wait_until(reached, timeout_s=30)


async def test_every_carrier_end_to_end(
    worker_settings: Callable[..., Settings],
    worker_pool: WorkerPool,
    mongo_db: AsyncDatabase[Document],
    downstream: MockDownstreamClient,
    downstream_url: str,
) -> None:
    delivering = {"downstream_url": downstream_url, "downstream_secret": DOWNSTREAM_SECRET}
    settings = worker_settings(sources=sources(mapped=False), **delivering)
    await worker_pool.start(settings, 1)
    unmapped: dict[str, tuple[str, bytes]] = {}
    app = create_app(settings)
    async with running(app), asgi_client(app) as client:
        for carrier in CARRIERS:
            unmapped[carrier.name] = await _first_pass(client, mongo_db, carrier)
    for name, (key, body) in unmapped.items():
        await wait_status(mongo_db, key, "dead_lettered")
        letter = await mongo_db[DEAD_LETTER_EVENTS].find_one({"_id": key})
        assert letter is not None, name
        assert letter["error"]["code"] == "unmapped_status", (name, letter["error"])
        assert letter["event"].encode() == body, name  # the carrier's body byte-exact
        assert letter["adapter"] == BY_ADAPTER[name]

    # The vocabulary now maps the new status: restart the workers, replay.
    worker_pool.stop_all()
    remapped = worker_settings(sources=sources(mapped=True), **delivering)
    await worker_pool.start(remapped, 1)
    replay = ("replay", "--code", "unmapped_status", "--yes", "--by", "test")
    replayed = await dlq(remapped, *replay)
    assert replayed.code == 0, replayed
    for key, _ in unmapped.values():
        await wait_status(mongo_db, key, "succeeded")
    # Replaying again finds nothing pending: each was applied once.
    again = await dlq(remapped, *replay)
    assert again.code == 3, again
    for carrier in CARRIERS:
        key, _ = unmapped[carrier.name]
        shipment = await _shipment(mongo_db, carrier)
        event_id = key.split(":", 1)[1]
        applied = [h for h in shipment["history"] if h["event_id"] == event_id]
        assert len(applied) == 1, (carrier.name, shipment["history"])
        assert shipment["status"] == carrier.event_type.status, carrier.name
    # Every applied carrier event reached the downstream, signed (at least once:
    # a delivery slower than the test's 1 s timeout is retried).
    log = (await downstream.deliveries()).deliveries
    assert all(d.signature_ok for d in log)
    delivered = Counter(d.webhook_id for d in log)
    for name, (key, _) in unmapped.items():
        assert delivered[key] >= 1, (name, delivered)
    assert len(delivered) == 2 * len(CARRIERS), delivered


BY_ADAPTER = {carrier.name: str(carrier.config["adapter"]) for carrier in CARRIERS}


async def _shipment(db: AsyncDatabase[Document], carrier: Carrier) -> Document:
    found = await db[SHIPMENTS].find_one({"_id": f"{carrier.name}:{carrier.tracking_number}"})
    assert found is not None, carrier.name
    return found


async def _first_pass(
    client: httpx.AsyncClient, db: AsyncDatabase[Document], carrier: Carrier
) -> tuple[str, bytes]:
    """The signed example, its resend, the refused requests and the unmapped status."""
    name, path = carrier.name, f"/v1/events/{carrier.name}"
    body = encode(document(carrier.example))
    accepted = await client.post(path, content=body, headers=signed(carrier, body))
    assert accepted.status_code == 202, (name, accepted.text)
    key = accepted.json()["idempotency_key"]
    if carrier.event_id is not None:
        assert key == f"{name}:{carrier.event_id}", name
    else:
        assert key.startswith(f"{name}:drv_"), (name, key)
    await wait_status(db, key, "succeeded")
    shipment = await _shipment(db, carrier)
    assert shipment["status"] == carrier.event_type.status, (name, shipment)
    assert shipment["tracking_number"] == carrier.tracking_number, name
    assert shipment.get("order_id") == carrier.order_id, name

    resent = await client.post(path, content=body, headers=signed(carrier, body))
    assert resent.status_code == 200, (name, resent.text)
    assert resent.json() == {**accepted.json(), "status": "duplicate"} | {
        "request_id": resent.json()["request_id"]
    }
    assert len((await _shipment(db, carrier))["history"]) == 1, name

    bad_body, bad_headers = tampered(carrier, body)
    refused = await client.post(path, content=bad_body, headers=bad_headers)
    assert (refused.status_code, refused.json()["code"]) == (401, "signature_invalid"), name
    without = {k: v for k, v in signed(carrier, body).items() if k != carrier.header}
    missing = await client.post(path, content=body, headers=without)
    assert (missing.status_code, missing.json()["code"]) == (401, "signature_missing"), name

    new = with_new_status(carrier)
    queued = await client.post(path, content=new, headers=signed(carrier, new))
    assert queued.status_code == 202, (name, queued.text)
    return str(queued.json()["idempotency_key"]), new


def test_sources_round_trip_through_the_environment() -> None:
    """The configured sources survive ``GATEWAY_SOURCES`` (what the worker process reads)."""
    from shared.settings import load_settings

    configured = sources(mapped=True)
    text = msgspec.json.encode(configured).decode()
    assert load_settings({"GATEWAY_SOURCES": text}).sources == configured
