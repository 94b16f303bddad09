"""What every adapter shares: its results, its errors, and the field rules.

An adapter turns one verified request of one source into a :data:`Normalised`
result. Each adapter module has a pure ``verify`` (raw body, headers by
lower-case name, keys, ``now``) and a pure ``normalise`` (the raw body; for a
built-in carrier, read through a :class:`FieldReader` that carries the status
vocabulary), bound to one source's configuration, prepared once at start:
``standard``, ``hex`` and ``generic`` by an :class:`Adapter` subclass, the
built-in carriers by the one binding of ``shared.adapters.carrier``. The
signature schemes they share are here (:func:`body_hmac`, :func:`static_token`).

Errors::

    shared.signing.SignatureError   the request is not proven to come from the source
                                     (``code``: signature_missing, timestamp_out_of_tolerance,
                                     signature_invalid) -> 401
    PayloadError                     verified, but the body is not an event we can take
                                     (``code``: malformed_json -> 400, validation_failed -> 422;
                                     ``errors`` lists every offending field)

A body that is verified and understood but is not a tracking update is no
error: it normalises to :class:`Ignored`.
"""

from __future__ import annotations

import abc
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Protocol

import msgspec
from msgspec import Meta, Struct

from shared.adapters.config import AdapterConfig, CarrierConfig, event_type_of
from shared.adapters.pointer import MISSING, Pointer, resolve, to_pointer
from shared.contracts import CourierEvent, EventType, FieldError, ProblemCode
from shared.signing import SignatureError

__all__ = [
    "Adapter",
    "AdapterFactory",
    "Canonical",
    "CarrierAdapter",
    "Ignored",
    "Normalised",
    "PayloadError",
    "Signature",
    "TrackingUpdate",
    "Vocabulary",
    "body_hmac",
    "derived_event_id",
    "other_event",
    "static_token",
]

_PRINTABLE: Final = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,128}")
_AwareDatetime = Annotated[datetime, Meta(tz=True)]

Vocabulary = Mapping[str, EventType]
"""A source's status table: carrier status -> event type."""


class Ignored(Struct, frozen=True):
    """A verified notification that is not a tracking update (answered 200 ``ignored``)."""

    reason: str


class Canonical(Struct, frozen=True):
    """A body in the gateway's own format (adapters ``standard`` and ``hex``)."""

    event: CourierEvent


class TrackingUpdate(Struct, frozen=True, kw_only=True):
    """A carrier's tracking update in the canonical fields.

    ``event_type`` is ``None`` when ``carrier_status`` is outside the source's
    vocabulary: the event is accepted and dead-lettered ``unmapped_status``
    until the vocabulary maps it. ``order_id`` is ``None`` when the carrier
    sends none; such an event skips the ``order_mismatch`` check.
    """

    event_id: str
    event_id_derived: bool
    tracking_number: str
    carrier_status: str
    event_type: EventType | None
    occurred_at: datetime
    order_id: str | None = None

    @property
    def shipment_id(self) -> str:
        """A carrier event's shipment is its tracking number: ``{source}:{tracking number}``."""
        return self.tracking_number


Normalised = Canonical | TrackingUpdate | Ignored


class PayloadError(ValueError):
    """A verified body that is not an event: not JSON (400) or missing/invalid fields (422)."""

    def __init__(self, code: ProblemCode, detail: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.errors = tuple(errors)


def derived_event_id(tracking_number: str, carrier_status: str, occurred_at: datetime) -> str:
    """A stable id for a carrier that sends none: the same update always yields the same id.

    A digest of (tracking number, carrier status, occurred_at as a UTC instant),
    so a resend is a duplicate and a new status or time is a new event.
    """
    instant = occurred_at.astimezone(UTC).isoformat()
    material = msgspec.json.encode([tracking_number, carrier_status, instant])
    return "drv_" + hashlib.sha256(material).hexdigest()[:32]


def decode_json(body: bytes) -> Any:
    """The body as plain JSON values; :class:`PayloadError` ``malformed_json`` if it is not JSON."""
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise PayloadError(ProblemCode.MALFORMED_JSON, f"the body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise PayloadError(ProblemCode.MALFORMED_JSON, "the body is nested too deeply") from exc


class FieldReader:
    """Reads a decoded body's fields by pointer, collecting every problem before failing.

    Each reader method returns ``None`` (and records a :class:`FieldError` named
    by JSON Pointer) when a required field is missing or invalid; :meth:`update`
    then raises one :class:`PayloadError` listing all of them, or builds the
    tracking update with the source's vocabulary.
    """

    __slots__ = ("document", "errors", "statuses")

    def __init__(self, document: Any, statuses: Vocabulary) -> None:
        self.document = document
        self.statuses = statuses
        self.errors: list[FieldError] = []

    def fail(self, pointer: Pointer, message: str) -> None:
        self.errors.append(FieldError(field=to_pointer(pointer), message=message))

    def get(self, pointer: Pointer) -> object:
        return resolve(self.document, pointer)

    def identifier(self, pointer: Pointer, *, required: bool = True) -> str | None:
        """A string or integer id of 1..128 printable characters, as text."""
        value = self.get(pointer)
        if value is MISSING or value is None or (value == "" and not required):
            if required:
                self.fail(pointer, "required")
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not _PRINTABLE.fullmatch(value):
            self.fail(pointer, "must be a string or integer of 1..128 printable characters")
            return None
        return value

    def instant(self, pointer: Pointer, *, unix_seconds: bool = False) -> datetime | None:
        """An RFC 3339 time with offset (or, if allowed, Unix seconds)."""
        value = self.get(pointer)
        if value is MISSING or value is None:
            self.fail(pointer, "required")
            return None
        parsed = parse_instant(value, unix_seconds=unix_seconds)
        if parsed is None:
            with_seconds = " or Unix seconds" if unix_seconds else ""
            self.fail(pointer, f"must be an RFC 3339 time with offset{with_seconds}")
        return parsed

    def newest(self, items: Pointer, field: Pointer, fallback: Pointer) -> datetime | None:
        """The newest valid ``field`` time among the array at ``items``, else ``fallback``.

        Entries without a valid time (absent, or no offset) are passed over; the
        fallback is required only when no entry has one.
        """
        entries = self.get(items)
        best: datetime | None = None
        if isinstance(entries, list):
            for entry in entries:
                when = parse_instant(resolve(entry, field))
                if when is not None and (best is None or when > best):
                    best = when
        if best is not None:
            return best
        return self.instant(fallback)

    def update(
        self,
        *,
        tracking_number: str | None,
        status: str | None,
        occurred_at: datetime | None,
        event_id: str | None = None,
        order_id: str | None = None,
    ) -> TrackingUpdate:
        """Raise if any field read was missing or invalid; else the update, its id derived if none.

        The arguments are the values this reader returned, read in the order the
        422's ``errors`` should name them.
        """
        if self.errors:
            raise PayloadError(
                ProblemCode.VALIDATION_FAILED,
                "the body is a tracking update with missing or invalid fields",
                self.errors,
            )
        assert tracking_number is not None
        assert status is not None
        assert occurred_at is not None
        derived = event_id is None
        return TrackingUpdate(
            event_id=event_id or derived_event_id(tracking_number, status, occurred_at),
            event_id_derived=derived,
            tracking_number=tracking_number,
            carrier_status=status,
            event_type=self.statuses.get(status),
            occurred_at=occurred_at,
            order_id=order_id,
        )


def other_event(reader: FieldReader, pointer: Pointer, tracking: str) -> str | None:
    """The event the body names at ``pointer``, when it is a string other than ``tracking``.

    Such a notification is verified but is no tracking update: the adapter
    answers :class:`Ignored`. A missing or non-string name decides nothing; the
    body is then read as a tracking update.
    """
    event = reader.get(pointer)
    return event if isinstance(event, str) and event != tracking else None


def parse_instant(value: object, *, unix_seconds: bool = False) -> datetime | None:
    """``value`` as a UTC datetime, or ``None`` if it is not a time with an offset.

    A time whose UTC instant falls outside the years 1..9999 is no time either.
    """
    try:
        if isinstance(value, str):
            return msgspec.convert(value, _AwareDatetime).astimezone(UTC)
        if unix_seconds and isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, tz=UTC)
    except (msgspec.ValidationError, OverflowError, OSError, ValueError):
        return None
    return None


def reader_for(
    body: bytes, decoder: msgspec.json.Decoder[Any] | None, statuses: Vocabulary
) -> FieldReader:
    """A :class:`FieldReader` over ``body``, decoded into ``decoder``'s Structs when they fit.

    The typed decode reads only the fields an adapter needs and skips the rest
    in C; any body it refuses (not JSON, a container of the wrong type, …) is
    read again untyped by :func:`document_object`, so errors are named exactly
    as if there were no fast path.
    """
    if decoder is not None:
        with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            if not body.isascii():
                body.decode()  # a typed decode does not check the fields it skips
            return FieldReader(decoder.decode(body), statuses)
    return document_object(body, statuses)


def document_object(body: bytes, statuses: Vocabulary) -> FieldReader:
    """A :class:`FieldReader` over ``body``, which must be a JSON object."""
    document = decode_json(body)
    if not isinstance(document, dict):
        raise PayloadError(
            ProblemCode.VALIDATION_FAILED,
            "the body must be a JSON object",
            [FieldError(field="", message="must be an object")],
        )
    return FieldReader(document, statuses)


def header(headers: Mapping[str, str], name: str) -> str:
    """A signature header's value; :class:`SignatureError` ``signature_missing`` when absent."""
    value = headers.get(name)
    if not value:
        raise SignatureError(ProblemCode.SIGNATURE_MISSING, f"the {name} header is required")
    return value


def decode_digest(value: str, encoding: str) -> bytes | None:
    """A signature's bytes from its ``hex`` or ``base64`` text; ``None`` if malformed."""
    try:
        if encoding == "hex":
            return bytes.fromhex(value)
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        return None


def verify_hmac(
    offered: Sequence[bytes], keys: Sequence[bytes], message: bytes, refusal: str
) -> None:
    """Accept if any ``offered`` digest is the HMAC-SHA256 of ``message`` under any key.

    Each key's digest is compared in constant time against the offered ones, so
    the timing tells neither which key nor which signature matched; otherwise
    :class:`SignatureError` ``signature_invalid`` with ``refusal`` as its detail.
    """
    for key in keys:
        expected = hmac.digest(key, message, hashlib.sha256)
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return
    raise SignatureError(ProblemCode.SIGNATURE_INVALID, refusal)


def verify_body_hmac(
    body: bytes,
    headers: Mapping[str, str],
    keys: Sequence[bytes],
    *,
    header_name: str,
    encoding: str,
    prefix: str = "",
) -> None:
    """Accept if ``header_name`` carries ``prefix`` + the HMAC-SHA256 of the raw body, encoded."""
    value = header(headers, header_name)
    offered = None
    if value.startswith(prefix):
        offered = decode_digest(value.removeprefix(prefix), encoding)
    refusal = f"the {header_name} header does not match"
    verify_hmac(() if offered is None else (offered,), keys, body, refusal)


def sign_body_hmac(
    body: bytes, key: bytes, *, header_name: str, encoding: str, prefix: str = ""
) -> dict[str, str]:
    """The header a carrier signing the raw body this way sends."""
    digest = hmac.digest(key, body, hashlib.sha256)
    text = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    return {header_name: prefix + text}


def verify_token(value: str, keys: Sequence[bytes], name: str) -> None:
    """Accept if the header's value equals any secret, compared in constant time.

    Digests are compared, not the values, so the time taken does not depend on
    the secrets' lengths either.
    """
    offered = hashlib.sha256(value.encode()).digest()
    for key in keys:
        if hmac.compare_digest(hashlib.sha256(key).digest(), offered):
            return
    raise SignatureError(ProblemCode.SIGNATURE_INVALID, f"the {name} header does not match")


class Verifier(Protocol):
    """A pure check of one request against a source's keys; raises ``SignatureError``."""

    def __call__(
        self,
        body: bytes,
        headers: Mapping[str, str],
        keys: Sequence[bytes],
        *,
        now: float,
        tolerance_s: int,
    ) -> None: ...


class Signer(Protocol):
    """The headers a carrier sends with ``body`` at ``now``, signed with ``key``."""

    def __call__(self, body: bytes, key: bytes, *, now: float) -> dict[str, str]: ...


class Signature(Struct, frozen=True):
    """How a carrier proves a request: the headers it reads, its ``verify`` and its ``sign``."""

    header_names: tuple[str, ...]
    """Lower-case names of the headers ``verify`` reads (for header filtering)."""
    verify: Verifier
    sign: Signer


def body_hmac(header_name: str, encoding: str, prefix: str = "") -> Signature:
    """``prefix`` + HMAC-SHA256(key, raw body) in ``header_name``, ``hex`` or ``base64``."""
    return _untimed(
        header_name,
        functools.partial(
            verify_body_hmac, header_name=header_name, encoding=encoding, prefix=prefix
        ),
        functools.partial(
            sign_body_hmac, header_name=header_name, encoding=encoding, prefix=prefix
        ),
    )


def static_token(header_name: str) -> Signature:
    """``header_name`` carries a secret as is (:func:`verify_token`); the body is not covered."""

    def check(body: bytes, headers: Mapping[str, str], keys: Sequence[bytes]) -> None:
        verify_token(header(headers, header_name), keys, header_name)

    def token(body: bytes, key: bytes) -> dict[str, str]:
        return {header_name: key.decode()}

    return _untimed(header_name, check, token)


def _untimed(
    header_name: str,
    check: Callable[[bytes, Mapping[str, str], Sequence[bytes]], None],
    sign: Callable[[bytes, bytes], dict[str, str]],
) -> Signature:
    """A scheme in one header that signs no time: the clock takes no part in it."""

    def verify(
        body: bytes,
        headers: Mapping[str, str],
        keys: Sequence[bytes],
        *,
        now: float,
        tolerance_s: int,
    ) -> None:
        check(body, headers, keys)

    def signed(body: bytes, key: bytes, *, now: float) -> dict[str, str]:
        return sign(body, key)

    return Signature((header_name,), verify, signed)


class AdapterFactory(Protocol):
    """Builds one source's adapter: an :class:`Adapter` class, or :meth:`CarrierRules.adapter`."""

    def __call__(self, config: Any, *, tolerance_s: int) -> Adapter: ...


class Adapter(abc.ABC):
    """One source's adapter: keys and vocabulary prepared once, then pure per request."""

    kind: str
    """The adapter's name (``adapter`` in ``GATEWAY_SOURCES``)."""
    __slots__ = ("_keys", "_tolerance_s")

    def __init__(self, config: AdapterConfig, *, tolerance_s: int) -> None:
        self._keys = tuple(self.key_of(secret) for secret in config.secrets)
        self._tolerance_s = tolerance_s

    def key_of(self, secret: str) -> bytes:
        """The HMAC key (or token bytes) of one configured secret."""
        return secret.encode()

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The HMAC keys (or token bytes) of the source's secrets, in the order configured."""
        return self._keys

    @property
    @abc.abstractmethod
    def header_names(self) -> tuple[str, ...]:
        """The lower-case names of the headers :meth:`verify` reads (for header filtering)."""

    @abc.abstractmethod
    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> None:
        """Return if the request is signed by this source; raise ``SignatureError`` if not."""

    @abc.abstractmethod
    def normalise(self, body: bytes) -> Normalised:
        """The verified body as a canonical result; raise :class:`PayloadError` if it is none."""

    @abc.abstractmethod
    def sign(self, body: bytes, *, now: float, key_index: int = 0) -> dict[str, str]:
        """The headers the carrier would send with ``body`` at ``now``, under one secret."""


class CarrierAdapter(Adapter):
    """An adapter with a status vocabulary: a built-in table plus the source's overrides."""

    __slots__ = ("statuses",)

    def __init__(
        self,
        config: CarrierConfig,
        *,
        tolerance_s: int,
        built_in: Vocabulary | None = None,
    ) -> None:
        super().__init__(config, tolerance_s=tolerance_s)
        self.statuses: Vocabulary = {
            **(built_in or {}),
            **{status: event_type_of(name) for status, name in config.statuses.items()},
        }
