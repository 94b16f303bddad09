"""arq connection settings and pools (workers, tools, and the API's own arq pool)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.queue.format import JOB_EXPIRES_MS, deserialize, serialize
from shared.settings import Settings, sentinel_addresses


def redis_settings(
    url: str,
    *,
    retries: int,
    timeout_s: float = 5.0,
    sentinels: Sequence[tuple[str, int]] = (),
    sentinel_master: str = "mymaster",
) -> RedisSettings:
    """arq connection settings for ``url``.

    ``retries`` > 0 adds a redis-py retry policy with exponential backoff so a
    worker rides out a Redis restart instead of exiting (docs/contract.md §4.2); the API
    passes 0 to fail fast and answer 503.

    With ``sentinels`` arq asks them for ``sentinel_master``'s address
    (redis-py's Sentinel-managed pool, which also drops a connection whose
    server answers ``READONLY`` and rediscovers); ``url`` then supplies only
    the database, credentials and TLS.
    """
    settings = RedisSettings.from_dsn(url)
    if sentinels:
        settings.host = list(sentinels)
        settings.sentinel = True
        settings.sentinel_master = sentinel_master
    settings.conn_timeout = max(1, int(timeout_s))
    settings.conn_retries = retries
    settings.conn_retry_delay = 1
    if retries:
        settings.retry = Retry(ExponentialBackoff(cap=5.0, base=0.1), retries)
        settings.retry_on_error = [RedisConnectionError, RedisTimeoutError, ConnectionError]
    return settings


async def open_queue_pool(
    url: str,
    queue_name: str,
    *,
    retries: int,
    sentinels: Sequence[tuple[str, int]] = (),
    sentinel_master: str = "mymaster",
) -> ArqRedis:
    """An arq pool using our serializer (jobs and results are MessagePack)."""
    return await create_pool(
        redis_settings(url, retries=retries, sentinels=sentinels, sentinel_master=sentinel_master),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_name,
        expires_extra_ms=JOB_EXPIRES_MS,
    )


def settings_for(settings: Settings, *, retries: int, timeout_s: float = 5.0) -> RedisSettings:
    """:func:`redis_settings` for a process's ``GATEWAY_*`` settings (Sentinel when configured)."""
    return redis_settings(
        settings.redis_url,
        retries=retries,
        timeout_s=timeout_s,
        sentinels=sentinel_addresses(settings),
        sentinel_master=settings.redis_sentinel_master,
    )


async def pool_for(settings: Settings, *, retries: int) -> ArqRedis:
    """:func:`open_queue_pool` for a process's ``GATEWAY_*`` settings (Sentinel when configured)."""
    return await open_queue_pool(
        settings.redis_url,
        settings.queue_name,
        retries=retries,
        sentinels=sentinel_addresses(settings),
        sentinel_master=settings.redis_sentinel_master,
    )


def client_for(settings: Settings, *, timeout_s: float, retries: int = 0) -> ArqRedis:
    """An arq client that connects on first use (no ping), for tools, health checks and,
    with Sentinel, the workers.

    With Sentinel it is redis-py's Sentinel-managed client: every new
    connection asks the Sentinels for the primary, so a client started during a
    failover reaches the new primary, and a connection that fails or finds a
    demoted primary (``READONLY``) is replaced by one to the new primary.
    ``retries`` > 0 retries a command that lost its connection, with the same
    backoff as :func:`redis_settings` (arq's own Sentinel pool takes no retry
    policy, so workers on Sentinel get theirs from here).
    """
    options: dict[str, object] = {
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "default_queue_name": settings.queue_name,
        "expires_extra_ms": JOB_EXPIRES_MS,
    }
    addresses = sentinel_addresses(settings)
    if not addresses:
        pool = ConnectionPool.from_url(
            settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        return ArqRedis(pool, auto_close_connection_pool=True, **options)  # type: ignore[arg-type]
    dsn = RedisSettings.from_dsn(settings.redis_url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        list(addresses), socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    retry: dict[str, Any] = {}
    if retries:
        retry = {
            "retry": Retry(ExponentialBackoff(cap=5.0, base=0.1), retries),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError, ConnectionError],
        }
    client = sentinel.master_for(
        settings.redis_sentinel_master,
        redis_class=ArqRedis,
        db=dsn.database,
        username=dsn.username,
        password=dsn.password,
        ssl=dsn.ssl,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        **retry,
    )
    for name, value in options.items():
        setattr(client, name, value)
    return client  # type: ignore[no-any-return]


async def close_client(client: Redis) -> None:
    """Close ``client`` and, for a Sentinel-managed one, its connections to the Sentinels.

    redis-py's ``aclose`` closes only the primary's pool; the Sentinel clients
    that found it stay open otherwise.
    """
    await client.aclose()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    if manager is not None:
        for sentinel in manager.sentinels:
            await sentinel.aclose()
