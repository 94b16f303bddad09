"""`gateway sign` produces headers the gateway (and the reference library) accept."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from standardwebhooks import Webhook

from scripts.commands.cli import main
from shared.adapters.config import StandardConfig
from shared.signing import generate_secret, sign_hex, verify_hex, verify_standard
from tests.shared.adapters.carriers import CARRIERS, Carrier
from tests.shared.adapters.carriers import SECRET as CARRIER_SECRET

BODY = b'{"event_id":"evt_1","event_type":"shipment.created"}'


@pytest.fixture
def body_file(tmp_path: Path) -> Path:
    path = tmp_path / "event.json"
    path.write_bytes(BODY)
    return path


def run(args: list[str], sources: dict[str, object]) -> str:
    result = CliRunner().invoke(main, args, env={"GATEWAY_SOURCES": json.dumps(sources)})
    assert result.exit_code == 0, result.output
    return result.output


def test_headers_verify_with_the_reference_library(body_file: Path) -> None:
    secret = generate_secret()
    output = run(
        ["sign", str(body_file), "--source", "acme", "--format", "json"],
        {"acme": {"secrets": [secret]}},
    )
    headers = json.loads(output)["headers"]
    Webhook(secret).verify(BODY, headers, json_parse=False)
    keys = StandardConfig(secrets=(secret,)).hmac_keys()
    verify_standard(keys, headers, BODY, now=time.time(), tolerance_s=300)


def test_curl_line_posts_the_file_byte_for_byte_to_the_source_url(body_file: Path) -> None:
    secret = generate_secret()
    output = run(
        ["sign", str(body_file), "--source", "acme", "--url", "http://gw:9000/"],
        {"acme": {"secrets": [secret]}},
    )
    words = shlex.split(output)
    assert words[:6] == ["curl", "-sS", "-i", "-X", "POST", "http://gw:9000/v1/events/acme"]
    assert words[-2:] == ["--data-binary", f"@{body_file}"]
    assert secret not in output


def test_hex_sources_get_an_x_signature(body_file: Path) -> None:
    secret = "test-only-hex-secret-0001"
    output = run(
        ["sign", str(body_file), "--source", "old", "--format", "headers"],
        {"old": {"secrets": [secret], "scheme": "hex"}},
    )
    assert output.strip() == f"x-signature: {sign_hex(secret.encode(), BODY)}"
    verify_hex((secret.encode(),), {"x-signature": output.split(": ", 1)[1].strip()}, BODY)


def test_unknown_source_is_a_usage_error(body_file: Path) -> None:
    result = CliRunner().invoke(
        main, ["sign", str(body_file), "--source", "nope"], env={"GATEWAY_SOURCES": "{}"}
    )
    assert result.exit_code == 2
    assert "source 'nope' is not configured" in result.output


def test_explicit_secret_needs_no_configuration(body_file: Path) -> None:
    secret = generate_secret()
    result = CliRunner().invoke(
        main,
        ["sign", str(body_file), "--source", "x", "--secret", secret, "--format", "json"],
        env={},
    )
    assert result.exit_code == 0, result.output
    Webhook(secret).verify(BODY, json.loads(result.output)["headers"], json_parse=False)


@pytest.mark.parametrize("carrier", CARRIERS, ids=lambda c: c.name)
def test_every_adapter_signs_the_way_its_carrier_does(body_file: Path, carrier: Carrier) -> None:
    """Each source's headers equal the carrier's own recipe (computed here with hmac/hashlib)."""
    output = run(
        ["sign", str(body_file), "--source", "carrier", "--format", "json"],
        {"carrier": {**carrier.config, "secrets": [CARRIER_SECRET]}},
    )
    value = json.loads(output)["headers"][carrier.header]
    # Shippo's signature is timestamped: check it at the time it names.
    now = int(value.split(",")[0].removeprefix("t=")) if carrier.name == "shippo" else 0
    assert value == carrier.sign(BODY, CARRIER_SECRET, now)[carrier.header]
