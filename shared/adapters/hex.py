"""Adapter ``hex``: the canonical body, ``X-Signature: sha256=<hex>`` (docs/contract.md §3.1)."""

from __future__ import annotations

from collections.abc import Mapping

from shared.adapters.base import Adapter, Canonical
from shared.adapters.standard import normalise_canonical
from shared.signing import HEX_HEADER, sign_hex, verify_hex

__all__ = ["HexAdapter"]


class HexAdapter(Adapter):
    """HMAC-SHA256 of the raw body keyed with the secret's UTF-8 bytes; no timestamp."""

    kind = "hex"
    __slots__ = ()

    @property
    def header_names(self) -> tuple[str, ...]:
        return (HEX_HEADER,)

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> None:
        verify_hex(self._keys, headers, body)

    def normalise(self, body: bytes) -> Canonical:
        return normalise_canonical(body)

    def sign(self, body: bytes, *, now: float, key_index: int = 0) -> dict[str, str]:
        return {HEX_HEADER: sign_hex(self._keys[key_index], body)}
