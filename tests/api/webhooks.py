"""Building courier requests for the API tests: event bodies and their signatures.

Standard Webhooks signatures come from the third-party ``standardwebhooks``
package (the reference implementation), and ``hex`` signatures from the
standard library, so the API is tested against signers that are not our code.
Bodies that are not UTF-8 cannot go through ``standardwebhooks`` (it signs
``str``); :func:`our_headers` signs those with ``shared.signing``, which
``tests/shared/test_signing.py`` proves byte-identical to the reference.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

from shared.signing import signed_headers
from tests.conftest import TEST_HEX_SECRET, TEST_SECRETS

JSON = {"content-type": "application/json"}


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def event_payload(event_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid courier event as a dict; keyword arguments replace top-level fields."""
    payload: dict[str, Any] = {
        "event_id": new_event_id() if event_id is None else event_id,
        "event_type": "shipment.picked_up",
        "occurred_at": "2026-11-22T10:15:00+01:00",
        "shipment": {"id": "shp_123", "order_id": "ord_9", "tracking_number": "1Z999"},
        "location": {"lat": 52.52, "lon": 13.4},
        "data": {"hub": "BER", "items": [{"sku": "A-1", "qty": 2}]},
    }
    payload.update(overrides)
    return payload


def event_body(event_id: str | None = None, **overrides: Any) -> bytes:
    """A valid courier event, serialized compactly."""
    return json.dumps(event_payload(event_id, **overrides), separators=(",", ":")).encode()


def reference_signature(
    body: bytes, secret: str = TEST_SECRETS[0], *, msg_id: str, timestamp: int
) -> str:
    """``v1,<base64>`` computed by the ``standardwebhooks`` reference package."""
    signed: str = Webhook(secret).sign(
        msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode()
    )
    return signed


def reference_headers(
    body: bytes,
    secret: str = TEST_SECRETS[0],
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Content type plus the three Standard Webhooks headers, signed by the reference package."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        **JSON,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": reference_signature(body, secret, msg_id=msg_id, timestamp=timestamp),
    }


def our_headers(body: bytes, secret: str = TEST_SECRETS[0]) -> dict[str, str]:
    """Content type plus Standard Webhooks headers signed by ``shared.signing`` (any bytes)."""
    return {**JSON, **signed_headers(secret, f"msg_{uuid.uuid4().hex}", body, time.time())}


def hex_headers(body: bytes, secret: str = TEST_HEX_SECRET) -> dict[str, str]:
    """Content type plus the legacy ``X-Signature: sha256=<hex>``, computed with hmac directly."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {**JSON, "X-Signature": f"sha256={digest}"}
