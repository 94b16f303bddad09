"""Process settings, read once from ``GATEWAY_*`` environment variables.

The environment is read in exactly one place, :func:`load_settings`, at process
start. Everything else receives a frozen :class:`Settings` instance; tests build
one directly with :func:`Settings` keyword arguments instead of patching
``os.environ``.

Enumerated values (``GATEWAY_LOG_LEVEL``, ``GATEWAY_LOG_FORMAT``, a source's
``adapter`` or legacy ``scheme``) are case-insensitive: ``warning`` and ``WARNING`` both read as
``WARNING`` (docs/contract.md §4.3). Checks that involve more than one field
are all in :func:`check_settings`.

Invalid settings raise :class:`SettingsError`, whose message names the variable
(``GATEWAY_MAX_ATTEMPTS: Expected `int` >= 1, got `0```); the console entry
points turn it into a one-line message and exit status 2.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta, Struct

from shared.adapters.config import SourceAdapterConfig, SourceConfigError, parse_source_config

__all__ = [
    "ENV_PREFIX",
    "SOURCE_ID_PATTERN",
    "Settings",
    "SettingsError",
    "SourceConfig",
    "check_settings",
    "decode_secret",
    "load_settings",
    "mongo_write_concern_w",
    "redact_url",
    "sentinel_addresses",
]

ENV_PREFIX = "GATEWAY_"
SOURCE_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SECRET_PREFIX = "whsec_"  # noqa: S105 - a format prefix, not a secret

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]


class SettingsError(ValueError):
    """A ``GATEWAY_*`` variable is missing, malformed or out of range."""


SourceConfig = SourceAdapterConfig
"""One courier allowed to post events: which adapter reads its requests, its secrets
and rules (tagged by ``adapter``; see :mod:`shared.adapters.config`)."""


class Settings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a gateway process is configured with.

    Each field ``name`` is read from ``GATEWAY_<NAME>``; units are in the name.
    """

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis holding the arq queue (``redis://``, ``rediss://`` or ``unix://``)."""
    mongo_url: str = "mongodb://127.0.0.1:27017"
    """MongoDB connection string."""
    mongo_db: str = "gateway"
    """MongoDB database holding processed_events, active_shipments, dead_letter_events."""
    queue_name: str = "gateway:events"
    """arq queue (a Redis sorted set) the API enqueues to and workers drain."""
    sources: Mapping[str, SourceAdapterConfig] = msgspec.field(default_factory=dict)
    """Configured couriers, from ``GATEWAY_SOURCES`` or ``GATEWAY_SOURCES_FILE``."""
    admin_token: str | None = None
    """Bearer token for ``/v1/admin``; the admin API answers 404 when unset."""
    downstream_url: str | None = None
    """Where workers POST shipment updates; no delivery step when unset."""
    downstream_secret: str | None = None
    """``whsec_`` secret that signs downstream deliveries (Standard Webhooks)."""
    downstream_timeout_s: PositiveFloat = 5.0
    """Total timeout of one downstream delivery."""
    signature_tolerance_s: Annotated[int, Meta(ge=0)] = 300
    """Allowed clock skew between ``webhook-timestamp`` and now, either way."""
    max_body_bytes: PositiveInt = 262_144
    """Largest accepted request body; a body of exactly this size is accepted."""
    max_attempts: PositiveInt = 6
    """Failed attempts after which a transiently failing event is dead-lettered."""
    backoff_base_s: PositiveFloat = 1.0
    """Upper bound of the first retry delay."""
    backoff_multiplier: Annotated[float, Meta(ge=1)] = 4.0
    """Growth of the delay bound per attempt."""
    backoff_cap_s: PositiveFloat = 300.0
    """Largest delay bound."""
    job_timeout_s: PositiveFloat = 30.0
    """Longest one job may run; a SIGKILLed worker's job reruns after this + 10 s."""
    lease_s: PositiveFloat = 45.0
    """How long a worker's claim on an idempotency key lasts before others may take over."""
    shutdown_grace_s: NonNegativeFloat = 20.0
    """On SIGTERM, how long running jobs may finish before they are cancelled."""
    keep_result_s: PositiveInt = 86_400
    """How long the queue remembers a finished key (the API's duplicate window)."""
    dedupe_ttl_s: PositiveInt = 30 * 86_400
    """How long a succeeded key is kept in processed_events (the worker's dedupe window)."""
    worker_concurrency: PositiveInt = 20
    """Jobs one worker process runs at once (arq ``max_jobs``)."""
    worker_batch: PositiveInt = 10
    """Most jobs claimed, stored and finished together (1: arq's own one-job-at-a-time runs)."""
    worker_metrics_port: Port = 9100
    """Port of a worker's ``/metrics`` and health endpoint (0 picks a free one)."""
    worker_health_interval_s: PositiveFloat = 10.0
    """How often a worker refreshes its own health key in Redis."""
    host: str = "127.0.0.1"
    """Interface the API binds."""
    port: Port = 8000
    """Port the API binds."""
    admin_port: Port | None = None
    """Second, internal listener for ``/console`` and ``/v1/admin``; unset, they share ``port``."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    worker_id: str | None = None
    """Name of this worker in its health key, logs and leases; default ``{hostname}-{pid}``."""
    worker_metrics_host: str = "127.0.0.1"
    """Interface a worker's ``/metrics`` server binds (``0.0.0.0`` in containers)."""
    worker_poll_delay_s: PositiveFloat = 0.1
    """How often an idle worker polls the queue for due jobs (arq ``poll_delay``)."""
    mongo_timeout_s: PositiveFloat = 5.0
    """Server selection, connect and socket timeout of a worker's MongoDB operations."""
    # High availability (docs/contract.md §4.5); checked in _check_high_availability.
    redis_sentinels: str = ""
    """``host:port,...`` of Redis Sentinels; when set, the primary is found through them
    (``GATEWAY_REDIS_URL`` then only supplies database, credentials and TLS)."""
    redis_sentinel_master: str = "mymaster"
    """Name the Sentinels monitor the queue's primary under."""
    ack_replicas: Annotated[int, Meta(ge=0)] = 0
    """Replicas that must acknowledge an enqueue (``WAIT n``) before the API answers 202."""
    mongo_write_concern: str = "majority"
    """``w`` of every MongoDB write that decides an outcome: ``majority`` or a number >= 1
    (always journaled)."""

    def __repr__(self) -> str:
        shown = {
            "redis_url": redact_url(self.redis_url),
            "mongo_url": redact_url(self.mongo_url),
            "queue_name": self.queue_name,
            "sources": sorted(self.sources),
        }
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())}, ...)"


def sentinel_addresses(settings: Settings) -> tuple[tuple[str, int], ...]:
    """``GATEWAY_REDIS_SENTINELS`` as ``(host, port)`` pairs; empty without Sentinel."""
    addresses: list[tuple[str, int]] = []
    for item in filter(None, (part.strip() for part in settings.redis_sentinels.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(
                f"GATEWAY_REDIS_SENTINELS: expected host:port[,host:port...], got {item!r}"
            )
        addresses.append((host.strip("[]"), int(port)))
    return tuple(addresses)


def mongo_write_concern_w(settings: Settings) -> int | str:
    """``GATEWAY_MONGO_WRITE_CONCERN`` as PyMongo's ``w``: ``"majority"`` or a count >= 1."""
    value = settings.mongo_write_concern.strip()
    if value.casefold() == "majority":
        return "majority"
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise SettingsError(
        f"GATEWAY_MONGO_WRITE_CONCERN: expected 'majority' or a number >= 1, got {value!r}"
    )


def _check_high_availability(settings: Settings) -> None:
    sentinel_addresses(settings)
    mongo_write_concern_w(settings)
    if settings.redis_sentinels and not settings.redis_sentinel_master:
        raise SettingsError("GATEWAY_REDIS_SENTINEL_MASTER: required with GATEWAY_REDIS_SENTINELS")


def decode_secret(secret: str) -> bytes:
    """Return the HMAC key of a ``whsec_<base64>`` secret (Standard Webhooks)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("secret must start with 'whsec_'")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error as exc:
        raise ValueError("secret is not valid base64 after 'whsec_'") from exc
    if len(key) < 16:
        raise ValueError("secret key must be at least 16 bytes")
    return key


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and banners."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


_FIELD_ENV = {name: ENV_PREFIX + name.upper() for name in Settings.__struct_fields__}
_JSON_FIELDS = {"sources"}


def _enumerations(struct: type[Struct]) -> dict[str, tuple[str, ...]]:
    """Each ``Literal`` field of ``struct`` and its allowed values, as declared."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return {
        field.name: tuple(str(value) for value in field.type.values)
        for field in info.fields
        if isinstance(field.type, msgspec.inspect.LiteralType)
    }


_SETTINGS_ENUMS = _enumerations(Settings)
_SOURCE_ENUM_KEYS = ("adapter", "scheme")


def _canonical(raw: Mapping[str, Any], enumerations: Mapping[str, tuple[str, ...]]) -> Any:
    """``raw`` with enumerated values spelled as declared, whatever their case."""
    canonical = dict(raw)
    for name, allowed in enumerations.items():
        value = canonical.get(name)
        if isinstance(value, str):
            canonical[name] = next((a for a in allowed if a.casefold() == value.casefold()), value)
    return canonical


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Decode :class:`Settings` from ``GATEWAY_*`` variables in ``environ``.

    Unknown ``GATEWAY_*`` names are ignored so newer deployments can add
    variables; a variable that is set but empty counts as unset.
    """
    raw: dict[str, Any] = {}
    for name, env in _FIELD_ENV.items():
        value = environ.get(env, "")
        if value == "" or name in _JSON_FIELDS:
            continue
        raw[name] = value
    raw["sources"] = _read_sources(environ)
    try:
        settings = msgspec.convert(_canonical(raw, _SETTINGS_ENUMS), Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_name_variable(str(exc)) + _choices(str(exc))) from exc
    check_settings(settings)
    return settings


def check_settings(settings: Settings) -> None:
    """Raise :class:`SettingsError` for the checks no single field's type expresses.

    :func:`load_settings` runs it; so does a process handed :class:`Settings`
    built directly. Sources: ids match :data:`SOURCE_ID_PATTERN` and every
    secret decodes. A downstream URL needs a valid ``whsec_`` secret. A
    worker's claim on an idempotency key must last longer than arq lets the
    job run; otherwise a second worker could take the key over while the
    first is still applying it.
    """
    _check_sources(settings.sources)
    _check_high_availability(settings)
    if settings.downstream_url and not settings.downstream_secret:
        raise SettingsError(
            "GATEWAY_DOWNSTREAM_SECRET: required when GATEWAY_DOWNSTREAM_URL is set"
        )
    if settings.downstream_secret:
        try:
            decode_secret(settings.downstream_secret)
        except ValueError as exc:
            raise SettingsError(f"GATEWAY_DOWNSTREAM_SECRET: {exc}") from exc
    if settings.lease_s <= settings.job_timeout_s:
        raise SettingsError(
            f"GATEWAY_LEASE_S: must exceed GATEWAY_JOB_TIMEOUT_S ({settings.job_timeout_s:g} s), "
            f"got {settings.lease_s:g} s"
        )


def _read_sources(environ: Mapping[str, str]) -> Any:
    inline = environ.get("GATEWAY_SOURCES", "")
    path = environ.get("GATEWAY_SOURCES_FILE", "")
    if inline and path:
        raise SettingsError("GATEWAY_SOURCES: set either GATEWAY_SOURCES or GATEWAY_SOURCES_FILE")
    variable, text = "GATEWAY_SOURCES", inline
    if path:
        variable = "GATEWAY_SOURCES_FILE"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(
                f"GATEWAY_SOURCES_FILE: cannot read {path!r}: {exc.strerror}"
            ) from exc
    if not text.strip():
        return {}
    try:
        decoded = msgspec.json.decode(text, type=dict[str, dict[str, Any]])
    except msgspec.ValidationError as exc:
        raise SettingsError(f"{variable}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise SettingsError(f"{variable}: {exc}") from exc
    sources: dict[str, SourceAdapterConfig] = {}
    for name, raw in decoded.items():
        _check_source_id(name)
        try:
            sources[name] = parse_source_config(name, _source_enums(raw))
        except SourceConfigError as exc:
            raise SettingsError(f"{variable}: {exc}") from exc
    return sources


def _source_enums(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A source entry with ``adapter``/``scheme`` lower-cased (enumerated: any case reads)."""
    entry = dict(raw)
    for key in _SOURCE_ENUM_KEYS:
        if isinstance(value := entry.get(key), str):
            entry[key] = value.lower()
    return entry


def _choices(message: str) -> str:
    """For msgspec's ``Invalid enum value ... - at `$.field```: the allowed values."""
    match = re.search(r"^Invalid enum value .* - at `[^`]*\.(\w+)`$", message)
    if match is None:
        return ""
    allowed = _SETTINGS_ENUMS.get(match.group(1))
    return "" if allowed is None else f" (expected one of {', '.join(allowed)}, in any case)"


def _check_source_id(source_id: str) -> None:
    if not SOURCE_ID_PATTERN.fullmatch(source_id):
        raise SettingsError(
            f"GATEWAY_SOURCES: source id {source_id!r} must match {SOURCE_ID_PATTERN.pattern}"
        )


def _check_sources(sources: Mapping[str, SourceAdapterConfig]) -> None:
    for source_id, config in sources.items():
        _check_source_id(source_id)
        # Settings built in code skip load_settings: the same checks, on the same shape.
        try:
            parse_source_config(source_id, msgspec.to_builtins(config))
        except SourceConfigError as exc:
            raise SettingsError(f"GATEWAY_SOURCES: {exc}") from exc


def _name_variable(message: str) -> str:
    """Turn msgspec's ``... - at `$.max_attempts``` into ``GATEWAY_MAX_ATTEMPTS: ...``."""
    match = re.search(r" - at `\$\.(\w+)", message)
    if match is None:
        return f"GATEWAY_*: {message}"
    field = match.group(1)
    return f"{_FIELD_ENV.get(field, field)}: {message[: match.start()]}"


def settings_from_env() -> Settings:
    """Settings from the environment for a console command, or exit 2 naming the bad variable.

    ``click`` and ``os`` are imported here so the rest of this module (and every
    library user of :class:`Settings`) stays free of the command-line layer.
    """
    import os

    import click

    try:
        return load_settings(os.environ)
    except SettingsError as exc:
        raise click.UsageError(f"invalid settings: {exc}") from exc
