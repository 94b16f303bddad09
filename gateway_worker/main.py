"""Console commands of the worker side: ``gateway worker``, ``worker-health``, ``init-db``."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys

import click
from redis.exceptions import RedisError

from gateway_worker.worker import build_worker_settings, run_worker
from shared.logging import configure_logging
from shared.queue import client_for, close_client, worker_health_key
from shared.settings import Settings, mongo_write_concern_w, settings_from_env
from shared.storage.errors import StorageError
from shared.storage.indexes import IndexChange, ensure_indexes, index_specs
from shared.storage.mongo import open_mongo

__all__ = ["health_command", "init_db_command", "worker_command"]


@click.command("worker")
def worker_command() -> None:
    """Run one worker process from GATEWAY_* settings until SIGTERM or SIGINT.

    On SIGTERM the worker stops taking jobs, lets running ones finish for up to
    GATEWAY_SHUTDOWN_GRACE_S, re-queues the rest and exits 0.
    """
    settings = settings_from_env()
    configure_logging(settings.log_level, settings.log_format, process="worker")
    if settings.log_level != "DEBUG":
        # arq logs two lines per job (with its arguments); ours carry the same facts.
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
    run_worker(build_worker_settings(settings))


@click.command("worker-health")
@click.option(
    "--worker-id",
    default=None,
    help="Check this worker's key (default: GATEWAY_WORKER_ID, else any worker on this host).",
)
def health_command(worker_id: str | None) -> None:
    """Exit 0 if a worker's health key is fresh in Redis, 1 otherwise (Docker HEALTHCHECK)."""
    settings = settings_from_env()
    name = worker_id or settings.worker_id
    try:
        found = asyncio.run(_find_health_key(settings, name))
    except (RedisError, OSError) as exc:
        click.echo(f"unhealthy: redis unreachable ({type(exc).__name__})", err=True)
        sys.exit(1)
    if found is None:
        target = name or f"any worker on {socket.gethostname()}"
        click.echo(f"unhealthy: no health key for {target}", err=True)
        sys.exit(1)
    click.echo(f"healthy: {found}")


async def _find_health_key(settings: Settings, worker_id: str | None) -> str | None:
    client = client_for(settings, timeout_s=3)
    try:
        if worker_id is not None:
            key = worker_health_key(settings.queue_name, worker_id)
            return key if await client.exists(key) else None
        # Default worker ids are "{hostname}-{pid}": any of this host's workers will do.
        pattern = _glob_escape(worker_health_key(settings.queue_name, socket.gethostname())) + "-*"
        async for raw in client.scan_iter(match=pattern, count=1000):
            return raw.decode() if isinstance(raw, bytes) else str(raw)
        return None
    finally:
        await close_client(client)


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


@click.command("init-db")
def init_db_command() -> None:
    """Create or correct the MongoDB indexes (idempotent; safe to run on every deploy)."""
    settings = settings_from_env()
    try:
        changes = asyncio.run(_init_db(settings))
    except StorageError as exc:
        raise click.ClickException(f"cannot set up indexes: {exc}") from exc
    for change in changes:
        as_name = f" (as {change.existing_name})" if change.existing_name else ""
        click.echo(f"{change.collection}.{change.name}: {change.action.value}{as_name}")


async def _init_db(settings: Settings) -> list[IndexChange]:
    client = open_mongo(
        settings.mongo_url,
        timeout_s=settings.mongo_timeout_s,
        write_concern=mongo_write_concern_w(settings),
    )
    try:
        return await ensure_indexes(client[settings.mongo_db], index_specs(settings.dedupe_ttl_s))
    finally:
        await client.close()
