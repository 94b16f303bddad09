"""Webhook signatures: Standard Webhooks (default) and the legacy ``hex`` scheme.

Pure functions: the clock is an argument, nothing is read from the environment.

Standard Webhooks signs ``{webhook-id}.{webhook-timestamp}.{raw body}`` with
HMAC-SHA256 and sends ``webhook-signature: v1,<base64> [v1,<base64> ...]``.
The ``hex`` scheme signs the raw body alone and sends
``X-Signature: sha256=<hex>``.

Every failed check raises :class:`SignatureError` carrying the problem code the
API answers with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence

from shared.contracts import ProblemCode
from shared.settings import decode_secret

__all__ = [
    "HEX_HEADER",
    "STANDARD_HEADERS",
    "SignatureError",
    "generate_secret",
    "sign",
    "sign_hex",
    "signed_headers",
    "verify_hex",
    "verify_standard",
]

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
STANDARD_HEADERS = (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
HEX_HEADER = "x-signature"
_HEX_PREFIX = "sha256="
_TIMESTAMP = re.compile(r"-?[0-9]{1,19}")


class SignatureError(Exception):
    """A request's signature does not prove it came from the source."""

    def __init__(self, code: ProblemCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def generate_secret() -> str:
    """A fresh ``whsec_`` secret with a 32-byte key."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message under one HMAC key."""
    digest = hmac.digest(key, b"%s.%d.%s" % (msg_id.encode(), timestamp, body), hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, now: float) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent at ``now``."""
    timestamp = int(now)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(decode_secret(secret), msg_id, timestamp, body),
    }


def verify_standard(
    keys: Sequence[bytes],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance_s: int,
) -> None:
    """Accept ``body`` if any ``v1`` signature matches any key; raise otherwise.

    ``headers`` must be looked up case-insensitively by the caller's mapping
    (Litestar's and httpx's are). Malformed list entries count as non-matching.
    """
    msg_id = headers.get(ID_HEADER)
    raw_timestamp = headers.get(TIMESTAMP_HEADER)
    signature_list = headers.get(SIGNATURE_HEADER)
    if not msg_id or not raw_timestamp or not signature_list:
        raise SignatureError(
            ProblemCode.SIGNATURE_MISSING,
            "webhook-id, webhook-timestamp and webhook-signature headers are all required",
        )
    timestamp = _parse_timestamp(raw_timestamp)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(
            ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE,
            f"webhook-timestamp is more than {tolerance_s} s away from the server's clock",
        )
    offered = _v1_signatures(signature_list)
    if offered:
        message = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
        for key in keys:
            expected = hmac.digest(key, message, hashlib.sha256)
            # Each comparison is constant-time; loops, not any() over a generator,
            # which costs a generator per request on the ingest path.
            for candidate in offered:
                if hmac.compare_digest(expected, candidate):
                    return
    raise SignatureError(
        ProblemCode.SIGNATURE_INVALID, "no v1 signature in webhook-signature matches"
    )


def sign_hex(key: bytes, body: bytes) -> str:
    """The ``X-Signature`` value of the legacy scheme: ``sha256=<hex>``."""
    return _HEX_PREFIX + hmac.digest(key, body, hashlib.sha256).hex()


def verify_hex(keys: Sequence[bytes], headers: Mapping[str, str], body: bytes) -> None:
    """Accept ``body`` if ``X-Signature`` matches the HMAC under any key."""
    value = headers.get(HEX_HEADER)
    if not value:
        raise SignatureError(ProblemCode.SIGNATURE_MISSING, "X-Signature header is required")
    offered: bytes | None = None
    if value.startswith(_HEX_PREFIX):
        try:
            offered = bytes.fromhex(value.removeprefix(_HEX_PREFIX))
        except ValueError:
            offered = None
    if offered is not None:
        for key in keys:
            if hmac.compare_digest(hmac.digest(key, body, hashlib.sha256), offered):
                return
    raise SignatureError(ProblemCode.SIGNATURE_INVALID, "X-Signature does not match")


def _parse_timestamp(raw: str) -> int:
    # At most 19 digits: int() refuses very long digit strings with ValueError.
    if (matched := _TIMESTAMP.fullmatch(raw.strip())) is None:
        raise SignatureError(
            ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE, "webhook-timestamp must be integer Unix seconds"
        )
    return int(matched.group())


def _v1_signatures(signature_list: str) -> list[bytes]:
    found: list[bytes] = []
    for entry in signature_list.split():
        version, sep, encoded = entry.partition(",")
        if version != "v1" or not sep:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except ValueError:  # binascii.Error, and a non-ASCII character in the header
            continue
    return found
