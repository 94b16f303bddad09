"""arq connection settings and pools (workers, tools, and the API's own arq pool)."""

from __future__ import annotations

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.queue.format import JOB_EXPIRES_MS, deserialize, serialize


def redis_settings(url: str, *, retries: int, timeout_s: float = 5.0) -> RedisSettings:
    """arq connection settings for ``url``.

    ``retries`` > 0 adds a redis-py retry policy with exponential backoff so a
    worker rides out a Redis restart instead of exiting (SPEC §4.2); the API
    passes 0 to fail fast and answer 503.
    """
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = max(1, int(timeout_s))
    settings.conn_retries = retries
    settings.conn_retry_delay = 1
    if retries:
        settings.retry = Retry(ExponentialBackoff(cap=5.0, base=0.1), retries)
        settings.retry_on_error = [RedisConnectionError, RedisTimeoutError, ConnectionError]
    return settings


async def open_queue_pool(url: str, queue_name: str, *, retries: int) -> ArqRedis:
    """An arq pool using our serializer (jobs and results are MessagePack)."""
    return await create_pool(
        redis_settings(url, retries=retries),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=queue_name,
        expires_extra_ms=JOB_EXPIRES_MS,
    )
