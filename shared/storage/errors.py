"""Storage errors, translated from PyMongo at this boundary.

::

    StorageError
    ├── StoreUnavailable   network, timeout, not-primary: may succeed later
    └── StoreRejected      the server refused the operation: will fail again
"""

from __future__ import annotations

__all__ = ["StorageError", "StoreRejected", "StoreUnavailable"]


class StorageError(Exception):
    """Root of every error raised by :mod:`shared.storage`."""


class StoreUnavailable(StorageError):
    """MongoDB could not be reached or did not answer in time (transient)."""


class StoreRejected(StorageError):
    """MongoDB answered with an error that retrying will not fix (permanent)."""
