"""Adapter ``generic``: a carrier described by configuration alone (docs/contract.md §3.4).

The source's ``signature`` says how requests are signed (an HMAC-SHA256 of the
raw body in a header, hex or base64, after an optional prefix; or a static
token equal to a secret), ``fields`` points at the canonical fields with JSON
Pointers, and ``statuses`` is the whole vocabulary. No request is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Final

from shared.adapters.base import (
    CarrierAdapter,
    TrackingUpdate,
    document_object,
    header,
    sign_body_hmac,
    tracking_update,
    verify_body_hmac,
    verify_token,
)
from shared.adapters.config import FieldPaths, GenericConfig, SignatureRule
from shared.adapters.pointer import Pointer, parse_pointer
from shared.contracts import EventType

__all__ = ["GenericAdapter", "Paths", "normalise", "verify"]

STATUSES: Final[Mapping[str, EventType]] = {}


class Paths:
    """A ``generic`` source's field pointers, parsed once."""

    __slots__ = ("event_id", "occurred_at", "order_id", "status", "tracking_number")

    def __init__(self, fields: FieldPaths) -> None:
        self.tracking_number = parse_pointer(fields.tracking_number)
        self.status = parse_pointer(fields.status)
        self.occurred_at = parse_pointer(fields.occurred_at)
        self.event_id: Pointer | None = (
            None if fields.event_id is None else parse_pointer(fields.event_id)
        )
        self.order_id: Pointer | None = (
            None if fields.order_id is None else parse_pointer(fields.order_id)
        )


def verify(
    body: bytes, headers: Mapping[str, str], keys: Sequence[bytes], rule: SignatureRule
) -> None:
    """Accept if the rule's header carries the body's HMAC, or a secret, under any key."""
    if rule.kind == "token":
        verify_token(header(headers, rule.header), keys, rule.header)
        return
    verify_body_hmac(
        body, headers, keys, header_name=rule.header, encoding=rule.encoding, prefix=rule.prefix
    )


def normalise(body: bytes, statuses: Mapping[str, EventType], paths: Paths) -> TrackingUpdate:
    """The fields the pointers name, as a tracking update."""
    reader = document_object(body)
    return tracking_update(
        reader,
        statuses=statuses,
        event_id=None if paths.event_id is None else reader.identifier(paths.event_id),
        tracking_number=reader.identifier(paths.tracking_number),
        status=reader.identifier(paths.status),
        occurred_at=reader.instant(paths.occurred_at, unix_seconds=True),
        order_id=None
        if paths.order_id is None
        else reader.identifier(paths.order_id, required=False),
    )


def sign(body: bytes, key: bytes, rule: SignatureRule) -> dict[str, str]:
    """The header a carrier following ``rule`` sends with ``body``."""
    if rule.kind == "token":
        return {rule.header: key.decode()}
    return sign_body_hmac(
        body, key, header_name=rule.header, encoding=rule.encoding, prefix=rule.prefix
    )


class GenericAdapter(CarrierAdapter):
    kind: ClassVar[str] = "generic"
    STATUSES: ClassVar[Mapping[str, EventType]] = STATUSES
    __slots__ = ("_paths", "_rule")

    def __init__(self, config: GenericConfig, *, tolerance_s: int) -> None:
        super().__init__(config, tolerance_s=tolerance_s)
        self._rule = config.signature
        self._paths = Paths(config.fields)

    @property
    def header_names(self) -> tuple[str, ...]:
        return (self._rule.header,)

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> None:
        verify(body, headers, self._keys, self._rule)

    def normalise(self, body: bytes) -> TrackingUpdate:
        return normalise(body, self.statuses, self._paths)

    def sign(self, body: bytes, *, now: float, key_index: int = 0) -> dict[str, str]:
        return sign(body, self._keys[key_index], self._rule)
