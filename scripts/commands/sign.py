"""``gateway sign FILE --source S``: sign a body the way a courier would.

Every adapter of docs/contract.md §3.4 signs with its own ``sign`` (the headers
its carrier sends: EasyPost's ``X-Hmac-Signature``, UPS's ``credential``, …).
Prints the signature headers, a ready ``curl`` line, or JSON. The secret comes
from the source's configuration (``GATEWAY_SOURCES`` / ``GATEWAY_SOURCES_FILE``)
or ``--secret``; it is never printed.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
import uuid
from pathlib import Path

import click
import msgspec

from shared.adapters.config import HexConfig, SourceAdapterConfig, StandardConfig
from shared.adapters.registry import build_adapter
from shared.adapters.standard import StandardAdapter

__all__ = ["curl_line", "sign_body", "sign_command"]


def sign_body(
    config: SourceAdapterConfig, body: bytes, *, now: float, msg_id: str | None = None
) -> dict[str, str]:
    """Headers that make ``body`` acceptable from a source with ``config`` (first secret)."""
    adapter = build_adapter(config, tolerance_s=300)
    if isinstance(adapter, StandardAdapter):
        return adapter.sign(body, now=now, msg_id=msg_id or f"msg_{uuid.uuid4().hex}")
    return adapter.sign(body, now=now)


def _scheme(scheme: str, secrets: tuple[str, ...]) -> SourceAdapterConfig:
    return HexConfig(secrets=secrets) if scheme == "hex" else StandardConfig(secrets=secrets)


def _configured_or_none(source: str) -> SourceAdapterConfig | None:
    """The source's configuration if settings are valid (--secret keeps its adapter)."""
    import os

    from shared.settings import SettingsError, load_settings

    try:
        return load_settings(os.environ).sources.get(source)
    except SettingsError:
        return None


def curl_line(url: str, headers: dict[str, str], body_file: str) -> str:
    """A shell-safe curl command posting ``body_file`` byte for byte."""
    parts = ["curl", "-sS", "-i", "-X", "POST", url, "-H", "content-type: application/json"]
    for name, value in headers.items():
        parts += ["-H", f"{name}: {value}"]
    parts += ["--data-binary", f"@{body_file}"]
    return shlex.join(parts)


@click.command("sign")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--source", "-s", required=True, help="Courier id the body is signed for.")
@click.option(
    "--secret",
    envvar="GATEWAY_SIGN_SECRET",
    help="Secret to sign with (default: the source's first configured secret).",
)
@click.option(
    "--scheme", type=click.Choice(["standard", "hex"]), help="Override the source's scheme."
)
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="Gateway base URL.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["curl", "headers", "json"]),
    default="curl",
    show_default=True,
)
@click.option("--id", "msg_id", help="webhook-id to use (default: a random msg_… id).")
def sign_command(
    file: str,
    source: str,
    secret: str | None,
    scheme: str | None,
    url: str,
    fmt: str,
    msg_id: str | None,
) -> None:
    """Sign FILE (a body; '-' reads stdin) for SOURCE with its adapter; print how to send it."""
    from shared.settings import settings_from_env

    body = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    if secret is None:
        configured = settings_from_env().sources.get(source)
        if configured is None:
            raise click.UsageError(
                f"source {source!r} is not configured "
                "(set GATEWAY_SOURCES or GATEWAY_SOURCES_FILE, or pass --secret)"
            )
        config = configured if scheme is None else _scheme(scheme, configured.secrets)
    else:
        configured = _configured_or_none(source)
        if scheme is not None or configured is None:
            config = _scheme(scheme or "standard", (secret,))
        else:
            config = msgspec.structs.replace(configured, secrets=(secret,))
    try:
        headers = sign_body(config, body, now=time.time(), msg_id=msg_id)
    except ValueError as exc:
        raise click.UsageError(f"cannot sign: {exc}") from exc
    target = f"{url.rstrip('/')}/v1/events/{source}"
    if fmt == "headers":
        for name, value in headers.items():
            click.echo(f"{name}: {value}")
    elif fmt == "json":
        click.echo(json.dumps({"url": target, "headers": headers}))
    else:
        click.echo(curl_line(target, headers, "-" if file == "-" else file))
