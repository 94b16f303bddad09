"""The MongoDB client, collection names, and translation of PyMongo errors."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Final

import msgspec
from bson.errors import BSONError
from pymongo import AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
    WriteError,
    WTimeoutError,
)

from shared.storage.errors import (
    DocumentNotStorable,
    StorageError,
    StoreRejected,
    StoreUnavailable,
)

__all__ = [
    "DEAD_LETTER_EVENTS",
    "DUPLICATE_KEY_CODES",
    "PROCESSED_EVENTS",
    "SHIPMENTS",
    "BulkWritten",
    "Collection",
    "Document",
    "literal",
    "open_mongo",
    "ping",
    "read_as",
    "server_says_retry",
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

RETRYABLE_SERVER_CODES: Final = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        24,  # LockTimeout
        46,  # LockBusy
        50,  # MaxTimeMSExpired
        64,  # WriteConcernFailed (WriteConcernTimeout in MongoDB 8)
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        112,  # WriteConflict
        133,  # FailedToSatisfyReadPreference
        134,  # ReadConcernMajorityNotAvailableYet
        189,  # PrimarySteppedDown
        202,  # NetworkInterfaceExceededTimeLimit
        262,  # ExceededTimeLimit
        365,  # TemporarilyUnavailable
        9001,  # SocketException
        10058,  # LegacyNotPrimary
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11601,  # Interrupted
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
    }
)
"""Server error codes that mean "try again": the retryable-writes spec's list plus
lock, interruption and write-concern codes MongoDB 7/8 return under load."""
RETRYABLE_LABELS: Final = ("RetryableWriteError", "TransientTransactionError")
"""Error labels with which the server itself marks an error retryable."""
DOCUMENT_SERVER_CODES: Final = frozenset(
    {
        10334,  # BSONObjectTooLarge
        17419,  # an update would make the document larger than 16 MiB
        17280,  # KeyTooLong (index key over the limit, old feature compatibility versions)
    }
)
"""Server error codes that refuse the document itself (the same document fails again)."""
DUPLICATE_KEY_CODES: Final = frozenset({11000, 11001, 12582})
"""Server codes of a unique-index violation (PyMongo's ``DuplicateKeyError``)."""


def server_says_retry(exc: OperationFailure) -> bool:
    """Whether the server marked ``exc`` retryable (by code or by error label)."""
    if exc.code in RETRYABLE_SERVER_CODES:
        return True
    return any(exc.has_error_label(label) for label in RETRYABLE_LABELS)


def open_mongo(
    url: str,
    *,
    timeout_s: float = 5.0,
    app_name: str = "courier-event-gateway",
    write_concern: int | str = "majority",
    **options: Any,
) -> AsyncMongoClient[Document]:
    """An async client with timeouts short enough to classify an outage quickly.

    PyMongo connects lazily, so this never blocks; the first operation does.
    Every write waits for ``write_concern`` members and the journal
    (``GATEWAY_MONGO_WRITE_CONCERN``, docs/contract.md §4.5): an outcome a
    worker records survives the loss of the primary once it is acknowledged.
    ``wtimeout`` bounds that wait by ``timeout_s``; a timeout is the retryable
    ``WriteConcernFailed`` (code 64) classified above.
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
        w=write_concern,
        journal=True,
        wTimeoutMS=ms,
        **options,
    )


@contextlib.contextmanager
def translate_errors(operation: str) -> Iterator[None]:
    """Re-raise PyMongo and BSON errors raised inside the block as :class:`StorageError` types.

    Encoding errors (``bson.errors.InvalidDocument``, ``DocumentTooLarge``,
    ``OverflowError`` for an integer beyond 64 bits, ...) are
    :class:`DocumentNotStorable`: the same document fails the same way again.
    """
    try:
        yield
    except StorageError:
        raise
    except (BSONError, OverflowError) as exc:
        raise DocumentNotStorable(f"{operation}: {_describe(exc)}") from exc
    except _TRANSIENT as exc:
        raise StoreUnavailable(f"{operation}: {_describe(exc)}") from exc
    except OperationFailure as exc:
        if server_says_retry(exc):
            raise StoreUnavailable(f"{operation}: {_describe(exc)}") from exc
        if exc.code in DOCUMENT_SERVER_CODES:
            raise DocumentNotStorable(f"{operation}: {_describe(exc)}") from exc
        raise StoreRejected(f"{operation}: {_describe(exc)}") from exc
    except PyMongoError as exc:
        raise StoreRejected(f"{operation}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    suffix = f" (server code {code})" if isinstance(code, int) else ""
    return f"{type(exc).__name__}: {exc}{suffix}"


async def ping(db: AsyncDatabase[Document]) -> float:
    """Round-trip a ``ping``; return its latency in milliseconds."""
    started = time.perf_counter()
    with translate_errors("ping"):
        await db.command("ping")
    return (time.perf_counter() - started) * 1000


async def topology(db: AsyncDatabase[Document]) -> dict[str, str | int]:
    """What ``hello`` says of the deployment: ``standalone`` or ``replica_set`` (name, primary)."""
    with translate_errors("hello"):
        hello = await db.command("hello")
    if "setName" not in hello:
        return {"mode": "standalone"}
    return {
        "mode": "replica_set",
        "set_name": str(hello["setName"]),
        "primary": str(hello.get("primary", "")),
        "members": len(hello.get("hosts", ())),
    }


class Collection:
    """Base of the domain classes over one collection: ``collection_name``, as ``_collection``."""

    collection_name: ClassVar[str]

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._collection: AsyncCollection[Document] = db[self.collection_name]

    async def _upsert(
        self, operation: str, query: Document, update: Document | list[Document], shown: Document
    ) -> Document | None:
        """One upserting ``findAndModify`` returning the post-image's ``shown`` fields.

        ``None`` when the upsert hit ``_id``'s unique index: the document exists but
        ``query`` did not match it, or another writer inserted it first.
        """
        with translate_errors(operation):
            try:
                return await self._collection.find_one_and_update(
                    query,
                    update,
                    projection=shown,
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                return None

    async def _bulk_write(
        self, operation: str, requests: Sequence[UpdateOne], *, ordered: bool
    ) -> BulkWritten:
        """One ``bulk_write``; its write errors are returned, every other failure raised translated.

        A write concern error is raised (as :class:`WriteConcernError`, so code 64 is
        transient): the writes happened, but are not known to be durable.
        """
        with translate_errors(operation):
            try:
                result = await self._collection.bulk_write(list(requests), ordered=ordered)
            except BulkWriteError as exc:
                details = exc.details
                concern = details.get("writeConcernErrors") or ()
                if concern:
                    first = concern[0]
                    raise WriteConcernError(
                        str(first.get("errmsg", "")), first.get("code"), first
                    ) from exc
                errors = {int(error["index"]): error for error in details.get("writeErrors", ())}
                return BulkWritten(matched=int(details.get("nMatched", 0)), write_errors=errors)
        return BulkWritten(matched=result.matched_count, write_errors={})


class BulkWritten(msgspec.Struct, frozen=True, kw_only=True):
    """What one ``bulk_write`` did: ``matched`` updates, and its write errors by operation index.

    An ordered bulk stops at its first write error, so it has at most one.
    """

    matched: int
    write_errors: dict[int, Document]

    def raise_write_errors(self, operation: str, *, allowed: frozenset[int] = frozenset()) -> None:
        """Raise the first write error whose code is not in ``allowed``, translated as
        :func:`translate_errors` translates a single write's."""
        for index in sorted(self.write_errors):
            error = self.write_errors[index]
            if error.get("code") not in allowed:
                # Without the operation itself: it can hold a courier's whole body.
                details = {name: value for name, value in error.items() if name != "op"}
                with translate_errors(f"{operation}[{index}]"):
                    raise WriteError(str(error.get("errmsg", "")), error.get("code"), details)


def read_as[T](kind: type[T], document: Document, what: str) -> T:
    """``document`` as the Struct ``kind``; :class:`StoreRejected` if it has another shape.

    ``what`` names the document in the message (``"dead letter"``, ``"processed event"``).
    """
    try:
        return msgspec.convert(document, kind)
    except msgspec.ValidationError as exc:
        raise StoreRejected(
            f"{what} {document.get('_id')!r} does not have the expected shape: {exc}"
        ) from exc


def literal(value: object) -> Document:
    """``value`` as a pipeline literal: courier strings may start with ``$``, which an
    aggregation pipeline would read as a field path."""
    return {"$literal": value}
