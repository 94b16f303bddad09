"""``gateway sources check``: run a captured request through a source's adapter.

The checks of docs/contract.md §3.1 and §3.4, in their order (body size →
content type → source → signature → JSON → schema), with the source's
configuration from ``GATEWAY_SOURCES`` / ``GATEWAY_SOURCES_FILE``; nothing is
queued or stored, and no server is contacted. Prints the verdict and the
canonical event, or which check failed and why. Secrets are never printed.

``--headers FILE`` holds the request's headers as captured: ``Name: value``
lines (a request line such as ``POST /v1/events/ups HTTP/1.1`` and blank lines
are skipped), or a JSON object of names to values.

Exit status:

* 0 — accepted: the gateway would queue it and the worker apply it;
* 3 — accepted but not applied: a notification that is not a tracking update
  (200 ``ignored``), or a status outside the vocabulary (202, then the dead
  letter ``unmapped_status``);
* 4 — refused: the answer's status and problem code are printed;
* 2 — usage: bad arguments, unreadable files, invalid settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import click
import msgspec

from gateway_worker.normalise import carrier_event
from shared.adapters.base import Canonical, Ignored, PayloadError, TrackingUpdate
from shared.adapters.registry import build_adapter
from shared.contracts import CourierEvent, FieldError, ProblemCode, idempotency_key
from shared.settings import Settings
from shared.signing import SignatureError

__all__ = ["Verdict", "check_request", "parse_headers", "sources_command"]

ACCEPTED: Final = 0
NOT_APPLIED: Final = 3
REFUSED: Final = 4
_STATUS: Final = {
    ProblemCode.PAYLOAD_TOO_LARGE: 413,
    ProblemCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ProblemCode.UNKNOWN_SOURCE: 401,
    ProblemCode.SIGNATURE_MISSING: 401,
    ProblemCode.TIMESTAMP_OUT_OF_TOLERANCE: 401,
    ProblemCode.SIGNATURE_INVALID: 401,
    ProblemCode.MALFORMED_JSON: 400,
    ProblemCode.VALIDATION_FAILED: 422,
}


class Verdict(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the gateway would do with one request."""

    verdict: str
    """``accepted``, ``ignored``, ``unmapped_status`` or ``refused``."""
    http_status: int
    check: str
    """The last check run: ``size``, ``content_type``, ``source``, ``signature``, ``schema``."""
    detail: str
    adapter: str | None = None
    code: str | None = None
    errors: list[FieldError] | None = None
    idempotency_key: str | None = None
    carrier_status: str | None = None
    event: CourierEvent | None = None

    @property
    def exit_code(self) -> int:
        if self.verdict == "accepted":
            return ACCEPTED
        return REFUSED if self.verdict == "refused" else NOT_APPLIED


def parse_headers(text: str) -> dict[str, str]:
    """Captured headers by lower-case name (first occurrence wins), from lines or JSON."""
    stripped = text.strip()
    if stripped.startswith("{"):
        loaded = json.loads(stripped)
        if not isinstance(loaded, dict):
            raise ValueError("a JSON headers file must hold an object")
        pairs = [(str(k), str(v)) for k, v in loaded.items()]
    else:
        pairs = []
        for line in stripped.splitlines():
            name, sep, value = line.partition(":")
            if not sep or " " in name.strip():
                continue  # the request line, or not a header
            pairs.append((name, value))
    headers: dict[str, str] = {}
    for name, value in pairs:
        headers.setdefault(name.strip().lower(), value.strip())
    return headers


def _refused(check: str, code: ProblemCode, detail: str, **extra: Any) -> Verdict:
    return Verdict("refused", _STATUS[code], check, detail, code=code.value, **extra)


def check_request(
    settings: Settings, source: str, headers: dict[str, str], body: bytes, *, now: float
) -> Verdict:
    """The verdict on one request, in the ingest route's order of checks."""
    if len(body) > settings.max_body_bytes:
        return _refused(
            "size",
            ProblemCode.PAYLOAD_TOO_LARGE,
            f"the body is larger than {settings.max_body_bytes} bytes",
        )
    content_type = headers.get("content-type")
    if content_type is None or (
        content_type.partition(";")[0].strip().lower() != "application/json"
    ):
        return _refused(
            "content_type",
            ProblemCode.UNSUPPORTED_MEDIA_TYPE,
            f"content-type is {content_type!r}, not application/json "
            "(capture it with the other headers)",
        )
    config = settings.sources.get(source)
    if config is None:
        configured = ", ".join(sorted(settings.sources)) or "none"
        return _refused(
            "source", ProblemCode.UNKNOWN_SOURCE, f"{source!r} is not configured ({configured})"
        )
    adapter = build_adapter(config, tolerance_s=settings.signature_tolerance_s)
    kind = adapter.kind
    try:
        adapter.verify(body, headers, now=now)
    except SignatureError as exc:
        return _refused("signature", exc.code, exc.detail, adapter=kind)
    try:
        normalised = adapter.normalise(body)
    except PayloadError as exc:
        errors = list(exc.errors) or None
        return _refused("schema", exc.code, exc.detail, adapter=kind, errors=errors)
    match normalised:
        case Ignored(reason=reason):
            return Verdict("ignored", 200, "schema", reason, adapter=kind)
        case Canonical(event=event):
            key = idempotency_key(source, event.event_id)
            return Verdict(
                "accepted",
                202,
                "schema",
                "a canonical event",
                kind,
                idempotency_key=key,
                event=event,
            )
        case TrackingUpdate():
            key = idempotency_key(source, normalised.event_id)
            if normalised.event_type is None:
                return Verdict(
                    "unmapped_status",
                    202,
                    "schema",
                    f"carrier status {normalised.carrier_status!r} is outside the vocabulary: "
                    'accepted, then dead-lettered unmapped_status until "statuses" maps it',
                    kind,
                    idempotency_key=key,
                    carrier_status=normalised.carrier_status,
                )
            event = carrier_event(body, normalised, normalised.event_type)
            return Verdict(
                "accepted",
                202,
                "schema",
                f"carrier status {normalised.carrier_status!r} maps to {event.event_type.value}",
                kind,
                idempotency_key=key,
                carrier_status=normalised.carrier_status,
                event=event,
            )


def _print(verdict: Verdict) -> None:
    click.echo(f"verdict: {verdict.verdict} (HTTP {verdict.http_status})")
    if verdict.adapter:
        click.echo(f"adapter: {verdict.adapter}")
    if verdict.code:
        click.echo(f"failed check: {verdict.check} ({verdict.code})")
    click.echo(f"why: {verdict.detail}")
    for error in verdict.errors or ():
        click.echo(f"  {error.field or '(body)'}: {error.message}")
    if verdict.idempotency_key:
        click.echo(f"idempotency key: {verdict.idempotency_key}")
    if verdict.event is not None:
        shown = msgspec.to_builtins(verdict.event)
        shown["data"] = msgspec.json.decode(verdict.event.data)
        click.echo("canonical event:")
        click.echo(json.dumps(shown, indent=2, ensure_ascii=False))


def _captured_file[F: Callable[..., Any]](flag: str, help_text: str) -> Callable[[F], F]:
    """A required option naming an existing file of the captured request (``--x`` → ``x_file``)."""
    return click.option(
        flag,
        f"{flag.removeprefix('--')}_file",
        required=True,
        type=click.Path(exists=True, dir_okay=False),
        help=help_text,
    )


@click.group("sources")
def sources_command() -> None:
    """Inspect the configured sources (GATEWAY_SOURCES / GATEWAY_SOURCES_FILE)."""


@sources_command.command("check")
@click.option("--source", "-s", required=True, help="Source id the request was posted to.")
@_captured_file("--headers", "The request's headers: 'Name: value' lines or a JSON object.")
@_captured_file("--body", "The request's body, byte for byte.")
@click.option(
    "--at",
    "at",
    type=float,
    help="Check timestamps as of this Unix time (a request captured earlier); default now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def check_command(
    source: str, headers_file: str, body_file: str, at: float | None, as_json: bool
) -> None:
    """Run a captured request through SOURCE's checks; print the verdict; touch nothing.

    Exit 0 accepted, 3 accepted but not applied (ignored, unmapped status),
    4 refused, 2 usage or invalid settings.
    """
    from shared.settings import settings_from_env

    settings = settings_from_env()
    try:
        headers = parse_headers(Path(headers_file).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"cannot read --headers {headers_file}: {exc}") from exc
    body = Path(body_file).read_bytes()
    verdict = check_request(settings, source, headers, body, now=time.time() if at is None else at)
    if as_json:
        click.echo(msgspec.json.encode(verdict).decode())
    else:
        _print(verdict)
    raise SystemExit(verdict.exit_code)
