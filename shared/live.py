"""Live status changes: what a worker PUBLISHes and the API relays as Server-Sent Events.

One Redis channel per queue (:func:`channel`); each message is one
:class:`StatusChange` encoded as JSON — the ``data`` of one event on
``GET /v1/admin/stream`` and on the console's stream (docs/contract.md §3.5).
Publishing is best effort: a lost message only delays a page until its next
poll, and it never costs a MongoDB operation.
"""

from __future__ import annotations

from typing import Final

import msgspec
from msgspec import Struct

__all__ = ["CHANNEL_SUFFIX", "StatusChange", "channel", "decode_change", "encode_change"]

CHANNEL_SUFFIX: Final = ":status"


class StatusChange(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One key's new ``processed_events.status`` (plus what a page shows next to it)."""

    idempotency_key: str
    source: str
    status: str
    attempt: int = 0
    code: str | None = None
    at_ms: int = 0
    """Worker's wall clock when the change was written (ms since the epoch)."""


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(StatusChange)


def channel(queue_name: str) -> str:
    """The Redis pub/sub channel of ``queue_name``'s status changes."""
    return queue_name + CHANNEL_SUFFIX


def encode_change(change: StatusChange) -> bytes:
    return _encoder.encode(change)


def decode_change(data: bytes) -> StatusChange:
    """Raises :class:`msgspec.DecodeError` / :class:`msgspec.ValidationError` for junk."""
    return _decoder.decode(data)
