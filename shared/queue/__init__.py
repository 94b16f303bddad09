"""The arq queue as both sides see it.

* :mod:`shared.queue.format`: arq's job format (serializer, job record, enqueue
  Lua script, keys) and :class:`QueueUnavailable`;
* :mod:`shared.queue.connection`: the pipelined hiredis Redis connection and its watchdog;
* :mod:`shared.queue.enqueuer`: :class:`Enqueuer`, the API's enqueue path;
* :mod:`shared.queue.pool`: arq ``RedisSettings`` and pools for workers and tools
  (``*_for(settings)`` find the primary through Sentinel when configured).

The public names stay importable from ``shared.queue``.
"""

from shared.queue.enqueuer import ENQUEUE_TIMEOUT_S, Enqueuer
from shared.queue.format import (
    JOB_EXPIRES_MS,
    JOB_FUNCTION,
    QueueUnavailable,
    ReplicationUnconfirmed,
    deserialize,
    serialize,
    worker_health_key,
)
from shared.queue.pool import (
    client_for,
    close_client,
    open_queue_pool,
    pool_for,
    redis_settings,
    settings_for,
)

__all__ = [
    "ENQUEUE_TIMEOUT_S",
    "JOB_EXPIRES_MS",
    "JOB_FUNCTION",
    "Enqueuer",
    "QueueUnavailable",
    "ReplicationUnconfirmed",
    "client_for",
    "close_client",
    "deserialize",
    "open_queue_pool",
    "pool_for",
    "redis_settings",
    "serialize",
    "settings_for",
    "worker_health_key",
]
