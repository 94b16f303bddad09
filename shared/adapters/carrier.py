"""What the built-in carrier modules share: their rules as data, and one adapter binding them.

A carrier module (``aftership``, ``easypost``, …) states, in one place each:
its :class:`~shared.adapters.base.Signature`; where its body keeps the
canonical fields (:class:`Fields`, from which the fast path's decoder is
derived); its built-in status table (:func:`vocabulary`); and a pure
``normalise`` holding whatever is particular to it (which notifications are
ignored, fallbacks, unusual time fields). :class:`CarrierRules` gathers them;
:meth:`CarrierRules.adapter` binds them to one source's configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
from msgspec import UNSET, Struct, UnsetType

from shared.adapters.base import (
    CarrierAdapter,
    FieldReader,
    Ignored,
    Signature,
    TrackingUpdate,
    Vocabulary,
    reader_for,
)
from shared.adapters.config import CarrierConfig
from shared.adapters.pointer import Pointer
from shared.contracts import EventType

__all__ = [
    "EACH",
    "BuiltinCarrierAdapter",
    "CarrierRules",
    "Fields",
    "Newest",
    "typed_decoder",
    "vocabulary",
]

EACH: Final = "*"
"""In a :func:`typed_decoder` pointer: every entry of an array."""


def vocabulary(statuses: Mapping[EventType, Sequence[str]]) -> Vocabulary:
    """A built-in status table, written as docs/carriers.md lists it: each event type's statuses.

    Returned the way adapters look it up, carrier status -> event type; a
    status listed under two event types is a mistake in the table and raises
    ``ValueError`` at import.
    """
    table: dict[str, EventType] = {}
    for event_type, names in statuses.items():
        for name in names:
            if name in table:
                raise ValueError(f"status {name!r} is listed under {table[name]} and {event_type}")
            table[name] = event_type
    return table


class Newest(Struct, frozen=True):
    """``occurred_at`` as the newest valid time at ``entry`` of the array ``items``.

    ``fallback`` is read only when no entry has one (:meth:`FieldReader.newest`).
    """

    items: Pointer
    entry: Pointer
    fallback: Pointer


class Fields(Struct, frozen=True, kw_only=True):
    """Where a carrier's body keeps the canonical fields, by (parsed) JSON Pointer.

    ``event_id`` ``None``: the carrier sends none and the id is derived.
    ``order_id`` is optional in the body; ``None``: the carrier sends none.
    """

    tracking_number: Pointer
    status: Pointer
    occurred_at: Pointer | Newest | Callable[[FieldReader], datetime | None]
    """A pointer to an RFC 3339 time, :class:`Newest`, or the carrier's own reading."""
    event_id: Pointer | None = None
    order_id: Pointer | None = None
    unix_seconds: bool = False
    """``occurred_at`` may also be Unix seconds (a ``generic`` source)."""

    @property
    def pointers(self) -> tuple[Pointer, ...]:
        """Every pointer :meth:`read` follows (``*``: each entry of a list), for a decoder.

        A carrier's own ``occurred_at`` reading names its pointers itself.
        """
        when = self.occurred_at
        times: list[Pointer] = []
        if isinstance(when, Newest):
            times = [(*when.items, EACH, *when.entry), when.fallback]
        elif isinstance(when, tuple):
            times = [when]
        optional = [pointer for pointer in (self.event_id, self.order_id) if pointer is not None]
        return (self.tracking_number, self.status, *times, *optional)

    def decoder(self, *also: Pointer) -> msgspec.json.Decoder[Any]:
        """The fast path's :func:`typed_decoder` of these fields and the pointers ``also`` read."""
        return typed_decoder(*self.pointers, *also)

    def read(
        self, reader: FieldReader, *, tracking_number: str | UnsetType | None = UNSET
    ) -> TrackingUpdate:
        """The tracking update at these pointers; :class:`PayloadError` naming every bad field.

        Fields are read (and errors listed) in the order event id, tracking
        number, status, ``occurred_at``, order id. A ``tracking_number`` given
        was read by the carrier's own rule (its errors, if any, already listed).
        """
        event_id = None if self.event_id is None else reader.identifier(self.event_id)
        if tracking_number is UNSET:
            tracking_number = reader.identifier(self.tracking_number)
        status = reader.identifier(self.status)
        when = self.occurred_at
        if isinstance(when, Newest):
            occurred_at = reader.newest(when.items, when.entry, when.fallback)
        elif isinstance(when, tuple):
            occurred_at = reader.instant(when, unix_seconds=self.unix_seconds)
        else:
            occurred_at = when(reader)
        order_id = (
            None if self.order_id is None else reader.identifier(self.order_id, required=False)
        )
        return reader.update(
            tracking_number=tracking_number,
            status=status,
            occurred_at=occurred_at,
            event_id=event_id,
            order_id=order_id,
        )


def typed_decoder(*pointers: Pointer) -> msgspec.json.Decoder[Any]:
    """A decoder of only the values at ``pointers``: every other field is skipped in C.

    The objects on the way to them become msgspec Structs, generated here from
    the pointers (an absent field is ``UNSET``, which the reader takes as
    missing); the values themselves decode as any JSON, so the
    :class:`FieldReader` judges them exactly as over an untyped decode. A ``*``
    token stands for every entry of an array (the list :meth:`FieldReader.newest`
    reads). Tokens must be Python identifiers (Struct field names).
    """
    tree: dict[str, Any] = {}
    for pointer in pointers:
        node = tree
        for token in pointer[:-1]:
            node = node.setdefault(token, {})
            if node is None:
                raise ValueError(f"{pointer}: a value and an object at once")
        if node.setdefault(pointer[-1], None) is not None:
            raise ValueError(f"{pointer}: a value and an object at once")
    return msgspec.json.Decoder(_struct_type(tree, "Body"))


def _struct_type(tree: dict[str, Any], name: str) -> Any:
    """The type that decodes ``tree``: a Struct of its tokens, or a list of its ``*`` entries."""
    if EACH in tree:
        if len(tree) > 1:
            raise ValueError(f"{name}: an array and an object at once")
        return list[_struct_type(tree[EACH], f"{name}Entry")]  # type: ignore[misc]
    fields = [
        (token, Any if child is None else _struct_type(child, f"{name}_{token}") | UnsetType | None)
        for token, child in tree.items()
    ]
    return msgspec.defstruct(name, [(token, kind, UNSET) for token, kind in fields])


class CarrierRules(Struct, frozen=True):
    """A built-in carrier's rules, as its module states them; :meth:`adapter` binds a source."""

    kind: str
    statuses: Vocabulary
    """The built-in vocabulary (a source's ``statuses`` are laid over it)."""
    signature: Signature
    normalise: Callable[[FieldReader], TrackingUpdate | Ignored]
    """The module's pure ``normalise``: the body's reader (with the vocabulary) to a result."""
    decoder: msgspec.json.Decoder[Any]
    """The fast path: a :func:`typed_decoder` of every field ``normalise`` reads."""
    key_of: Callable[[str], bytes] = str.encode
    """The HMAC key (or token bytes) of one configured secret."""

    def adapter(self, config: CarrierConfig, *, tolerance_s: int) -> BuiltinCarrierAdapter:
        """The adapter of one source of this carrier (the registry's constructor)."""
        return BuiltinCarrierAdapter(config, self, tolerance_s=tolerance_s)


class BuiltinCarrierAdapter(CarrierAdapter):
    """A built-in carrier's :class:`CarrierRules`, bound to one source."""

    __slots__ = ("_rules", "kind")

    def __init__(self, config: CarrierConfig, rules: CarrierRules, *, tolerance_s: int) -> None:
        self._rules = rules
        self.kind = rules.kind
        super().__init__(config, tolerance_s=tolerance_s, built_in=rules.statuses)

    def key_of(self, secret: str) -> bytes:
        return self._rules.key_of(secret)

    @property
    def header_names(self) -> tuple[str, ...]:
        return self._rules.signature.header_names

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> None:
        self._rules.signature.verify(
            body, headers, self._keys, now=now, tolerance_s=self._tolerance_s
        )

    def normalise(self, body: bytes) -> TrackingUpdate | Ignored:
        return self._rules.normalise(reader_for(body, self._rules.decoder, self.statuses))

    def sign(self, body: bytes, *, now: float, key_index: int = 0) -> dict[str, str]:
        return self._rules.signature.sign(body, self._keys[key_index], now=now)
