"""Storage errors, translated from PyMongo and BSON at this boundary.

::

    StorageError                     root of everything shared.storage raises; .code is a
    │                                stable machine name (used in attempt logs and dead letters)
    ├── StoreUnavailable             network, timeout, not-primary, or a server error the
    │                                server labels retryable: may succeed later
    └── StoreRejected                the server or the driver refused the operation: will
        │                            fail again
        ├── DocumentNotStorable      the document cannot be encoded or stored (BSON
        │                            encoding error, integer beyond 64 bits, too large)
        └── IndexSetupError          ``gateway init-db`` cannot make an index as specified
                                     (a conflicting index exists, or a TTL out of range)

Callers never see a PyMongo or BSON exception: :func:`shared.storage.mongo.translate_errors`
raises these ``from`` the original.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "DocumentNotStorable",
    "IndexSetupError",
    "StorageError",
    "StoreRejected",
    "StoreUnavailable",
]


class StorageError(Exception):
    """Root of every error raised by :mod:`shared.storage`."""

    code: ClassVar[str] = "storage_error"


class StoreUnavailable(StorageError):
    """MongoDB could not be reached, did not answer in time, or asked to be retried (transient)."""

    code = "store_unavailable"


class StoreRejected(StorageError):
    """MongoDB answered with an error that retrying will not fix (permanent)."""

    code = "store_rejected"


class DocumentNotStorable(StoreRejected):
    """A document could not be encoded to BSON or is refused as a document (permanent)."""

    code = "document_not_storable"


class IndexSetupError(StoreRejected):
    """An index cannot be created as specified; the message says what to do."""

    code = "index_setup_failed"
