"""Source configuration: which adapter a source uses, its secrets and its rules.

One entry of ``GATEWAY_SOURCES`` is decoded by :func:`parse_source_config` into
one of the tagged :data:`SourceAdapterConfig` structs (tag field ``adapter``)::

    {"adapter": "easypost", "secrets": ["..."], "statuses": {"unknown": "created"}}
    {"scheme": "hex", "secrets": ["..."]}          # legacy spelling of {"adapter": "hex"}

Invalid configuration raises :class:`SourceConfigError`, whose message names the
source and the key (``easypost-eu.statuses.unknown: ...``). Nothing here reads
the environment, and this module imports nothing that imports
``shared.settings``, so the settings module can import it at its top.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta, Struct

from shared.adapters.pointer import PointerSyntaxError, parse_pointer
from shared.contracts import EventType

__all__ = [
    "ADAPTER_KINDS",
    "AdapterConfig",
    "AfterShipConfig",
    "CarrierConfig",
    "EasyPostConfig",
    "FieldPaths",
    "GenericConfig",
    "HexConfig",
    "ShippoConfig",
    "ShopifyConfig",
    "SignatureRule",
    "SourceAdapterConfig",
    "SourceConfigError",
    "StandardConfig",
    "UpsConfig",
    "event_type_of",
    "parse_source_config",
]

MIN_SECRET_CHARS: Final = 16
"""Shortest secret (HMAC key text or static token) accepted for every adapter but ``standard``."""

_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_AT_PATH: Final = re.compile(r"^(?P<message>.*) - at `\$(?P<path>.*)`$", re.DOTALL)

Secret = Annotated[str, Meta(min_length=1)]
Secrets = Annotated[tuple[Secret, ...], Meta(min_length=1)]


class SourceConfigError(ValueError):
    """A source's configuration is invalid; the message names the source and the key."""


class AdapterConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="adapter"
):
    secrets: Secrets
    """Every active secret (rotation: any one matching accepts)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(secrets=<{len(self.secrets)} redacted>)"

    @property
    def kind(self) -> str:
        """The adapter's name (the ``adapter`` tag): ``standard``, ``easypost``, …"""
        tag = self.__struct_config__.tag
        assert isinstance(tag, str)
        return tag

    def hmac_keys(self) -> tuple[bytes, ...]:
        """The HMAC keys (or token bytes) of the secrets, in the order configured."""
        # Imported here: the adapters import this module.
        from shared.adapters.registry import build_adapter

        return build_adapter(self, tolerance_s=0).keys  # type: ignore[arg-type]  # only tagged configs exist


class StandardConfig(AdapterConfig, frozen=True, tag="standard"):
    """Standard Webhooks over the canonical body; secrets are ``whsec_<base64 key>``."""


class HexConfig(AdapterConfig, frozen=True, tag="hex"):
    """``X-Signature: sha256=<hex>`` over the canonical body; key = the secret's UTF-8."""


class CarrierConfig(AdapterConfig, frozen=True):
    statuses: dict[str, str] = msgspec.field(default_factory=dict)
    """Carrier status -> event type (``picked_up`` or ``shipment.picked_up``), over built-ins."""


class EasyPostConfig(CarrierConfig, frozen=True, tag="easypost"):
    """EasyPost webhook secrets (``X-Hmac-Signature``)."""


class AfterShipConfig(CarrierConfig, frozen=True, tag="aftership"):
    """AfterShip Tracking webhook secrets (``aftership-hmac-sha256``)."""


class ShopifyConfig(CarrierConfig, frozen=True, tag="shopify"):
    """Shopify app client secrets (``X-Shopify-Hmac-Sha256``)."""


class UpsConfig(CarrierConfig, frozen=True, tag="ups"):
    """UPS Track Alert subscription credentials (the ``credential`` header's value)."""


class ShippoConfig(CarrierConfig, frozen=True, tag="shippo"):
    """Shippo webhook HMAC secrets (``Shippo-Auth-Signature``)."""


class SignatureRule(Struct, frozen=True, forbid_unknown_fields=True):
    """How a ``generic`` source signs: an HMAC of the raw body, or a static token."""

    kind: Literal["hmac-sha256", "token"]
    header: str
    """Header carrying the signature or token (matched case-insensitively)."""
    encoding: Literal["hex", "base64"] = "hex"
    """Encoding of the HMAC (``hmac-sha256`` only)."""
    prefix: str = ""
    """Text stripped from the start of the header's value before decoding (``hmac-sha256`` only)."""


class FieldPaths(Struct, frozen=True, forbid_unknown_fields=True):
    """JSON Pointers (RFC 6901) to a ``generic`` source's canonical fields."""

    tracking_number: str
    status: str
    occurred_at: str
    """RFC 3339 with offset, or Unix seconds."""
    event_id: str | None = None
    """Absent: the event id is derived from (tracking number, status, occurred_at)."""
    order_id: str | None = None
    """Absent: events take no part in the ``order_mismatch`` check."""


class GenericConfig(CarrierConfig, frozen=True, kw_only=True, tag="generic"):
    """A carrier described by configuration alone."""

    signature: SignatureRule
    fields: FieldPaths


SourceAdapterConfig = (
    StandardConfig
    | HexConfig
    | EasyPostConfig
    | AfterShipConfig
    | ShopifyConfig
    | UpsConfig
    | ShippoConfig
    | GenericConfig
)

ADAPTER_KINDS: Final = (
    "standard",
    "hex",
    "easypost",
    "aftership",
    "shopify",
    "ups",
    "shippo",
    "generic",
)


def event_type_of(name: str) -> EventType:
    """The event type a vocabulary entry names: ``picked_up`` or ``shipment.picked_up``."""
    return EventType(name if name.startswith("shipment.") else f"shipment.{name}")


def parse_source_config(name: str, raw: Mapping[str, Any]) -> SourceAdapterConfig:
    """Decode and check one source's configuration; raise :class:`SourceConfigError`.

    ``adapter`` defaults to ``standard``; the legacy ``scheme`` (``standard`` or
    ``hex``) names the adapter when ``adapter`` is absent and must agree with it
    when both are given.
    """
    if not isinstance(raw, Mapping):
        raise SourceConfigError(f"{name}: expected an object, got {type(raw).__name__}")
    fields = dict(raw)
    scheme = fields.pop("scheme", None)
    if scheme is not None and scheme not in ("standard", "hex"):
        raise SourceConfigError(f"{name}.scheme: must be 'standard' or 'hex', got {scheme!r}")
    adapter = fields.setdefault("adapter", scheme or "standard")
    if scheme is not None and adapter != scheme:
        raise SourceConfigError(
            f"{name}.scheme: {scheme!r} contradicts adapter {adapter!r}; give only 'adapter'"
        )
    if adapter not in ADAPTER_KINDS:
        raise SourceConfigError(
            f"{name}.adapter: unknown adapter {adapter!r} (one of {', '.join(ADAPTER_KINDS)})"
        )
    statuses = fields.get("statuses")
    if isinstance(statuses, Mapping):
        for status, target in statuses.items():
            if not isinstance(target, str):
                raise SourceConfigError(
                    f"{name}.statuses.{status}: expected an event type name, "
                    f"got {type(target).__name__}"
                )
    try:
        config: SourceAdapterConfig = msgspec.convert(fields, SourceAdapterConfig)
    except msgspec.ValidationError as exc:
        raise SourceConfigError(_name_key(name, str(exc))) from exc
    _check_secrets(name, config)
    if isinstance(config, CarrierConfig):
        _check_statuses(name, config)
    if isinstance(config, GenericConfig):
        config = _checked_generic(name, config)
    return config


def _check_secrets(name: str, config: SourceAdapterConfig) -> None:
    for position, secret in enumerate(config.secrets):
        key = f"{name}.secrets[{position}]"
        if isinstance(config, StandardConfig):
            # Imported here: shared.settings imports this module at its top.
            from shared.settings import decode_secret

            try:
                decode_secret(secret)
            except ValueError as exc:
                raise SourceConfigError(f"{key}: {exc}") from exc
        elif len(secret) < MIN_SECRET_CHARS:
            raise SourceConfigError(
                f"{key}: {config.__struct_config__.tag} secrets must be at least "
                f"{MIN_SECRET_CHARS} characters"
            )


def _check_statuses(name: str, config: CarrierConfig) -> None:
    choices = ", ".join(t.status for t in EventType)
    for status, target in config.statuses.items():
        if not status:
            raise SourceConfigError(f"{name}.statuses: a carrier status must not be empty")
        try:
            event_type_of(target)
        except ValueError:
            raise SourceConfigError(
                f"{name}.statuses.{status}: {target!r} is not an event type (one of {choices})"
            ) from None
    if isinstance(config, GenericConfig) and not config.statuses:
        raise SourceConfigError(
            f"{name}.statuses: a generic source needs at least one status mapping"
        )


def _checked_generic(name: str, config: GenericConfig) -> GenericConfig:
    rule = config.signature
    if not _HEADER_NAME.fullmatch(rule.header):
        raise SourceConfigError(f"{name}.signature.header: {rule.header!r} is not a header name")
    if rule.kind == "token" and rule.prefix:
        raise SourceConfigError(f"{name}.signature.prefix: only hmac-sha256 signatures have one")
    for field in FieldPaths.__struct_fields__:
        pointer = getattr(config.fields, field)
        if pointer is None:
            continue
        try:
            parse_pointer(pointer)
        except PointerSyntaxError as exc:
            raise SourceConfigError(f"{name}.fields.{field}: {exc}") from None
    return msgspec.structs.replace(
        config, signature=msgspec.structs.replace(rule, header=rule.header.lower())
    )


def _name_key(name: str, message: str) -> str:
    """``Expected `str` - at `$.fields.status``` -> ``{name}.fields.status: Expected `str```."""
    matched = _AT_PATH.match(message)
    if matched is None:
        return f"{name}: {message}"
    return f"{name}{matched['path'].removeprefix('$')}: {matched['message']}"
