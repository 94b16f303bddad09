"""``python -m scripts.proof.bench.console``: the console's page times on a big store.

Seeds a fresh database with 10,000 dead letters and 100,000 processed events
(``insert_many`` in batches, the documents shaped as the worker writes them),
creates the indexes, then asks each console page several times through the
real app in process (ASGI, real Redis and MongoDB) and prints each page's
server time (median and worst of the rounds) as a markdown table.

MongoDB is ``--mongo-url`` or the embedded MongoDB-wire server (mongoeco);
Redis is a ``redis-server`` of its own. docs/console.md records a run.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import httpx

from gateway_api.app import create_app
from scripts.harness.services import EmbeddedMongo, RedisServer
from shared.settings import Settings
from shared.storage.indexes import ensure_indexes, index_specs
from shared.storage.mongo import DEAD_LETTER_EVENTS, PROCESSED_EVENTS, SHIPMENTS, open_mongo

_CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')
BATCH = 1_000
CODES = ("downstream_unavailable", "downstream_rejected", "invalid_transition", "job_timeout")


def _event(n: int, now: datetime) -> dict[str, object]:
    at = now - timedelta(seconds=n % 7200)
    status = ("succeeded", "succeeded", "succeeded", "retrying", "dead_lettered")[n % 5]
    return {
        "_id": f"acme:evt_{n:07d}",
        "source": ("acme", "globex", "initech")[n % 3],
        "event_id": f"evt_{n:07d}",
        "status": status,
        "attempts": n % 3,
        "attempt_log": [],
        "first_seen_at": at,
        "updated_at": at,
        "completed_at": at,
        "body": b'{"event_id":"evt_%07d"}' % n,
    }


def _letter(n: int, now: datetime) -> dict[str, object]:
    at = now - timedelta(seconds=n)
    code = CODES[n % len(CODES)]
    key = f"acme:evt_{n:07d}"
    return {
        "_id": key,
        "idempotency_key": key,
        "source": "acme",
        "event_id": f"evt_{n:07d}",
        "shipment_id": f"shp_{n % 2000}",
        "event": f'{{"event_id":"evt_{n:07d}"}}',
        "reason": "retries_exhausted",
        "error": {"code": code, "message": f"{code} happened"},
        "attempts": [],
        "dead_lettered_at": at,
        "created_at": at,
        "updated_at": at,
        "status": "pending" if n % 4 else "replayed",
        "replays": [],
    }


async def _seed(settings: Settings, events: int, letters: int) -> float:
    started = time.perf_counter()
    client = open_mongo(settings.mongo_url, timeout_s=600)
    try:
        db = client[settings.mongo_db]
        now = datetime.now(UTC)
        for start in range(0, events, BATCH):
            batch = [_event(n, now) for n in range(start, min(events, start + BATCH))]
            await db[PROCESSED_EVENTS].insert_many(batch, ordered=False)
        for start in range(0, letters, BATCH):
            batch = [_letter(n, now) for n in range(start, min(letters, start + BATCH))]
            await db[DEAD_LETTER_EVENTS].insert_many(batch, ordered=False)
        await db[SHIPMENTS].insert_one(
            {"_id": "acme:shp_1", "source": "acme", "shipment_id": "shp_1",
             "tracking_number": "1Z999", "status": "in_transit", "history": []}
        )  # fmt: skip
        await ensure_indexes(db, index_specs(settings.dedupe_ttl_s))
    finally:
        await client.close()
    return time.perf_counter() - started


async def _measure(settings: Settings, rounds: int) -> list[tuple[str, float, float]]:
    app = create_app(settings)
    pages = [
        ("overview", "/console/"),
        ("search: event id", "/console/events?q=evt_0054321"),
        ("search: tracking number", "/console/events?q=1Z999"),
        ("event timeline", "/console/events/acme:evt_0000007"),
        ("dead letters (pending)", "/console/dead-letters?status=pending"),
        ("dead letters (pending, code)", "/console/dead-letters?status=pending&code=job_timeout"),
        ("replay dry run (first 500 pending)", "/console/dead-letters/replay?status=pending"),
    ]
    rows: list[tuple[str, float, float]] = []
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            login = await client.get("/console/login")
            token = _CSRF.search(login.text)
            assert token is not None
            await client.post(
                "/console/login",
                data={"token": settings.admin_token or "", "_csrf_token": token.group(1)},
            )
            for name, path in pages:
                times = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    answer = await client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    if answer.status_code not in (200, 303):
                        raise click.ClickException(
                            f"{path}: {answer.status_code} {answer.text[:300]}"
                        )
                rows.append((name, statistics.median(times), max(times)))
    return rows


@click.command()
@click.option("--events", default=100_000, show_default=True)
@click.option("--dead-letters", "letters", default=10_000, show_default=True)
@click.option("--rounds", default=5, show_default=True)
@click.option("--mongo-url", default=None, help="a real MongoDB (default: the embedded server)")
def main(events: int, letters: int, rounds: int, mongo_url: str | None) -> None:
    """Seed a big store, then time each console page."""
    with tempfile.TemporaryDirectory() as workdir:
        redis = RedisServer(Path(workdir)).start()
        mongo = None if mongo_url else EmbeddedMongo().start()
        try:
            settings = Settings(
                redis_url=redis.url,
                mongo_url=mongo_url or (mongo.url if mongo else ""),
                mongo_db=f"bench_console_{secrets.token_hex(4)}",
                admin_token=secrets.token_urlsafe(24),
            )
            seeded = asyncio.run(_seed(settings, events, letters))
            click.echo(
                f"seeded {events:,} processed events, {letters:,} dead letters in {seeded:.1f} s"
            )
            rows = asyncio.run(_measure(settings, rounds))
        finally:
            if mongo is not None:
                mongo.stop()
            redis.stop()
    store = "MongoDB at --mongo-url" if mongo_url else "mongoeco (embedded MongoDB-wire server)"
    click.echo(f"\nstore: {store}; {rounds} rounds per page\n")
    click.echo("| page | median ms | worst ms |\n|---|---:|---:|")
    for name, median, worst in rows:
        click.echo(f"| {name} | {median:.0f} | {worst:.0f} |")


if __name__ == "__main__":
    main()
