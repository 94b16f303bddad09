"""Adapter ``generic``: a carrier described by configuration alone (docs/contract.md §3.4).

The source's ``signature`` says how requests are signed (an HMAC-SHA256 of the
raw body in a header, hex or base64, after an optional prefix; or a static
token equal to a secret), ``fields`` points at the canonical fields with JSON
Pointers, and ``statuses`` is the whole vocabulary. No request is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.adapters.base import (
    CarrierAdapter,
    Signature,
    TrackingUpdate,
    Vocabulary,
    body_hmac,
    document_object,
    static_token,
)
from shared.adapters.carrier import Fields
from shared.adapters.config import FieldPaths, GenericConfig, SignatureRule
from shared.adapters.pointer import parse_pointer

__all__ = ["GenericAdapter", "fields_of", "normalise", "signature_of"]


def signature_of(rule: SignatureRule) -> Signature:
    """The check a source's ``signature`` rule describes: a body HMAC or a static token."""
    if rule.kind == "token":
        return static_token(rule.header)
    return body_hmac(rule.header, rule.encoding, rule.prefix)


def fields_of(fields: FieldPaths) -> Fields:
    """A source's ``fields`` pointers, parsed once; ``occurred_at`` may be Unix seconds."""
    return Fields(
        tracking_number=parse_pointer(fields.tracking_number),
        status=parse_pointer(fields.status),
        occurred_at=parse_pointer(fields.occurred_at),
        event_id=None if fields.event_id is None else parse_pointer(fields.event_id),
        order_id=None if fields.order_id is None else parse_pointer(fields.order_id),
        unix_seconds=True,
    )


def normalise(body: bytes, statuses: Vocabulary, fields: Fields) -> TrackingUpdate:
    """The fields the pointers name, as a tracking update."""
    return fields.read(document_object(body, statuses))


class GenericAdapter(CarrierAdapter):
    kind = "generic"
    __slots__ = ("_fields", "_signature")

    def __init__(self, config: GenericConfig, *, tolerance_s: int) -> None:
        super().__init__(config, tolerance_s=tolerance_s)
        self._signature = signature_of(config.signature)
        self._fields = fields_of(config.fields)

    @property
    def header_names(self) -> tuple[str, ...]:
        return self._signature.header_names

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> None:
        self._signature.verify(body, headers, self._keys, now=now, tolerance_s=self._tolerance_s)

    def normalise(self, body: bytes) -> TrackingUpdate:
        return normalise(body, self.statuses, self._fields)

    def sign(self, body: bytes, *, now: float, key_index: int = 0) -> dict[str, str]:
        return self._signature.sign(body, self._keys[key_index], now=now)
