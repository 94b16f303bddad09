"""`gateway sources check`: a captured request's verdict, exit codes, nothing touched.

Runs through the real command line (click), with ``GATEWAY_SOURCES`` naming
every carrier and no Redis or MongoDB anywhere: the command must not need them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from scripts.commands.cli import main
from tests.shared.adapters import carriers
from tests.shared.adapters.carriers import CARRIERS, Carrier

SOURCES = json.dumps({c.name: c.config for c in CARRIERS})


def check(tmp_path: Path, source: str, headers: str, body: bytes, *extra: str) -> Result:
    (tmp_path / "headers.txt").write_text(headers)
    (tmp_path / "body.json").write_bytes(body)
    args = ["sources", "check", "--source", source]
    args += ["--headers", str(tmp_path / "headers.txt"), "--body", str(tmp_path / "body.json")]
    return CliRunner().invoke(main, [*args, *extra], env={"GATEWAY_SOURCES": SOURCES})


def captured(carrier: Carrier, body: bytes, *, at: int | None = None) -> str:
    """Headers as ``curl -v`` or a proxy log shows them: request line, then ``Name: value``."""
    signed = carrier.sign(body, carriers.SECRET, int(time.time()) if at is None else at)
    lines = [f"POST /v1/events/{carrier.name} HTTP/1.1", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in signed.items()]
    return "\n".join(lines) + "\n"


def example_body(
    carrier: Carrier, path: tuple[str | int, ...] | None = None, value: Any = None
) -> bytes:
    """The carrier's example tracking update as sent; with ``path``, that field set to
    ``value`` (``...`` removes it)."""
    example = carriers.document(carrier.example)
    if path is not None:
        example = carriers.set_path(example, path, value)
    return carriers.encode(example)


def check_signed(tmp_path: Path, carrier: Carrier, body: bytes, *extra: str) -> Result:
    """:func:`check` ``body`` with the headers the carrier sends for it."""
    return check(tmp_path, carrier.name, captured(carrier, body), body, *extra)


@pytest.mark.parametrize("carrier", CARRIERS, ids=lambda c: c.name)
def test_a_signed_tracking_update_prints_its_canonical_event_and_exits_0(
    tmp_path: Path, carrier: Carrier
) -> None:
    result = check_signed(tmp_path, carrier, example_body(carrier), "--json")
    assert result.exit_code == 0, result.output
    verdict: dict[str, Any] = json.loads(result.output)
    assert verdict["verdict"] == "accepted"
    assert verdict["adapter"] == carrier.config["adapter"]
    assert verdict["event"]["event_type"] == carrier.event_type.value
    assert verdict["event"]["shipment"]["id"] == carrier.tracking_number
    assert verdict["idempotency_key"].startswith(f"{carrier.name}:")
    assert carriers.SECRET not in result.output


def test_text_output_names_the_failed_check_and_exits_4(tmp_path: Path) -> None:
    carrier = CARRIERS[0]
    body = example_body(carrier)
    tampered = body.replace(b"EZ", b"EY", 1)
    result = check(tmp_path, carrier.name, captured(carrier, body), tampered)
    assert result.exit_code == 4, result.output
    assert "verdict: refused (HTTP 401)" in result.output
    assert "failed check: signature (signature_invalid)" in result.output


def test_a_missing_field_is_named_by_json_pointer(tmp_path: Path) -> None:
    carrier = CARRIERS[0]
    path, pointer = next(iter(carrier.required.items()))
    result = check_signed(tmp_path, carrier, example_body(carrier, path, ...), "--json")
    assert result.exit_code == 4, result.output
    verdict = json.loads(result.output)
    assert (verdict["http_status"], verdict["code"]) == (422, "validation_failed")
    assert pointer in [error["field"] for error in verdict["errors"]]


def test_an_unmapped_status_and_an_ignored_notification_exit_3(tmp_path: Path) -> None:
    carrier = CARRIERS[0]
    body = example_body(carrier, carrier.status_path, "brand_new")
    result = check_signed(tmp_path, carrier, body, "--json")
    assert result.exit_code == 3, result.output
    assert json.loads(result.output)["verdict"] == "unmapped_status"
    assert carrier.ignored is not None
    result = check_signed(tmp_path, carrier, carriers.encode(carrier.ignored), "--json")
    assert result.exit_code == 3, result.output
    assert json.loads(result.output)["verdict"] == "ignored"


def test_a_stale_timestamp_is_judged_as_of_at(tmp_path: Path) -> None:
    shippo = next(c for c in CARRIERS if c.name == "shippo")
    body = example_body(shippo)
    headers = captured(shippo, body, at=1_700_000_000)
    stale = check(tmp_path, "shippo", headers, body, "--json")
    assert stale.exit_code == 4
    assert json.loads(stale.output)["code"] == "timestamp_out_of_tolerance"
    then = check(tmp_path, "shippo", headers, body, "--json", "--at", "1700000010")
    assert then.exit_code == 0, then.output


def test_an_unknown_source_and_a_missing_content_type_are_refused(tmp_path: Path) -> None:
    carrier = CARRIERS[0]
    body = example_body(carrier)
    unknown = check(tmp_path, "nobody", captured(carrier, body), body, "--json")
    assert (unknown.exit_code, json.loads(unknown.output)["code"]) == (4, "unknown_source")
    no_type = captured(carrier, body).replace("Content-Type: application/json\n", "")
    refused = check(tmp_path, carrier.name, no_type, body, "--json")
    assert json.loads(refused.output)["code"] == "unsupported_media_type"
