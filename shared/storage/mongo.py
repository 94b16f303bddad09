"""The MongoDB client, collection names, and translation of PyMongo errors."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Final

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from shared.storage.errors import StorageError, StoreRejected, StoreUnavailable

__all__ = [
    "DEAD_LETTER_EVENTS",
    "PROCESSED_EVENTS",
    "SHIPMENTS",
    "Document",
    "open_mongo",
    "ping",
    "translate_errors",
]

PROCESSED_EVENTS: Final = "processed_events"
SHIPMENTS: Final = "active_shipments"
DEAD_LETTER_EVENTS: Final = "dead_letter_events"

Document = dict[str, Any]

_TRANSIENT = (
    AutoReconnect,  # includes NotPrimaryError and NetworkTimeout
    ConnectionFailure,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)


def open_mongo(
    url: str, *, timeout_s: float = 5.0, app_name: str = "courier-event-gateway", **options: Any
) -> AsyncMongoClient[Document]:
    """An async client with timeouts short enough to classify an outage quickly.

    PyMongo connects lazily, so this never blocks; the first operation does.
    """
    ms = int(timeout_s * 1000)
    return AsyncMongoClient(
        url,
        tz_aware=True,
        appname=app_name,
        serverSelectionTimeoutMS=ms,
        connectTimeoutMS=ms,
        socketTimeoutMS=ms,
        retryWrites=True,
        **options,
    )


@contextlib.contextmanager
def translate_errors(operation: str) -> Iterator[None]:
    """Re-raise PyMongo errors raised inside the block as :class:`StorageError` types."""
    try:
        yield
    except StorageError:
        raise
    except _TRANSIENT as exc:
        raise StoreUnavailable(f"{operation}: {type(exc).__name__}: {exc}") from exc
    except PyMongoError as exc:
        raise StoreRejected(f"{operation}: {type(exc).__name__}: {exc}") from exc


async def ping(db: AsyncDatabase[Document]) -> float:
    """Round-trip a ``ping``; return its latency in milliseconds."""
    started = time.perf_counter()
    with translate_errors("ping"):
        await db.command("ping")
    return (time.perf_counter() - started) * 1000
