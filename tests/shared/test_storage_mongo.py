"""Translation of PyMongo and BSON errors at the storage boundary."""

from __future__ import annotations

import pytest
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, WriteConcernError, WriteError

from shared.storage.errors import DocumentNotStorable, StoreRejected, StoreUnavailable
from shared.storage.mongo import Document, translate_errors

RETRYABLE = [
    24,  # LockTimeout
    64,  # WriteConcernFailed / WriteConcernTimeout
    189,  # PrimarySteppedDown
    262,  # ExceededTimeLimit
    10107,  # NotWritablePrimary
    11600,  # InterruptedAtShutdown
    11601,  # Interrupted
    11602,  # InterruptedDueToReplStateChange
]


@pytest.mark.parametrize("code", RETRYABLE)
def test_server_codes_the_server_marks_retryable_are_transient(code: int) -> None:
    for error in (OperationFailure("busy", code), WriteError("busy", code, {})):
        with pytest.raises(StoreUnavailable, match=f"server code {code}"), translate_errors("op"):
            raise error


def test_write_concern_failure_is_transient() -> None:
    with pytest.raises(StoreUnavailable), translate_errors("op"):
        raise WriteConcernError("waiting for replication timed out", 64, {})


@pytest.mark.parametrize("label", ["RetryableWriteError", "TransientTransactionError"])
def test_an_error_labelled_retryable_is_transient_whatever_its_code(label: str) -> None:
    with pytest.raises(StoreUnavailable), translate_errors("op"):
        raise OperationFailure("x", 2, {"errorLabels": [label]})


def test_other_server_refusals_are_rejections() -> None:
    with pytest.raises(StoreRejected) as refused, translate_errors("op"):
        raise OperationFailure("bad value", 2, {})
    assert type(refused.value) is StoreRejected
    with pytest.raises(DocumentNotStorable), translate_errors("op"):
        raise WriteError("object to insert too large", 10334, {})


@pytest.mark.parametrize(
    "document",
    [
        {"n": 2**63},  # beyond BSON's int64: OverflowError in the encoder
        {"n": -(2**63) - 1},
        {"key\x00with nul": 1},  # BSON field names are C strings: InvalidDocument
    ],
    ids=["int64_overflow", "int64_underflow", "nul_in_field_name"],
)
async def test_documents_the_driver_cannot_encode_are_not_storable(
    mongo_db: AsyncDatabase[Document], document: Document
) -> None:
    with pytest.raises(DocumentNotStorable) as refused, translate_errors("insert"):
        await mongo_db["anything"].insert_one(document)
    assert refused.value.code == "document_not_storable"
    assert isinstance(refused.value, StoreRejected)
    assert await mongo_db["anything"].count_documents({}) == 0
