"""`gateway api`: the real process, uvicorn with uvloop and httptools, over real sockets."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.harness.services import RedisServer, free_port, wait_for_port
from tests.factories import (
    TEST_HEX_SECRET,
    TEST_SECRETS,
    event_body,
    new_event_id,
    reference_headers,
)

pytestmark = pytest.mark.slow

MAX_BODY_BYTES = 8192


class ApiProcess:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.log = log

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


def gateway_env(redis_url: str, mongo_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    sources = {
        "acme": {"secrets": list(TEST_SECRETS)},
        "legacy": {"secrets": [TEST_HEX_SECRET], "scheme": "hex"},
    }
    env.update(
        GATEWAY_REDIS_URL=redis_url,
        GATEWAY_MONGO_URL=mongo_url,
        GATEWAY_MONGO_DB="gateway_server_test",
        GATEWAY_QUEUE_NAME="gateway:server-test",
        GATEWAY_SOURCES=json.dumps(sources),
        GATEWAY_PORT=str(port),
        GATEWAY_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        GATEWAY_LOG_LEVEL="DEBUG",
    )
    env.update(extra)
    return env


def gateway_executable() -> str:
    return str(Path(sys.executable).with_name("gateway"))


@pytest.fixture(scope="module")
def api_server(
    redis_server: RedisServer, mongo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    redis_server.start()
    port = free_port()
    log = tmp_path_factory.mktemp("api") / "api.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [gateway_executable(), "api"],
            env=gateway_env(redis_server.url, mongo_url, port),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, timeout_s=20)
            yield ApiProcess(process, port, log)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)


def test_signed_event_is_accepted_over_http(api_server: ApiProcess) -> None:
    event_id = new_event_id()
    body = event_body(event_id)
    headers = {**reference_headers(body), "X-Request-ID": "server-test-1"}

    response = httpx.post(f"{api_server.url}/v1/events/acme", content=body, headers=headers)

    assert response.status_code == 202
    assert response.json() == {
        "status": "accepted",
        "idempotency_key": f"acme:{event_id}",
        "request_id": "server-test-1",
    }
    assert httpx.get(f"{api_server.url}/health/ready").status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        accepted = [e for e in api_server.log_lines() if e.get("event") == "event.accepted"]
        if accepted:
            break
        time.sleep(0.05)
    assert accepted[0]["idempotency_key"] == f"acme:{event_id}"
    assert accepted[0]["request_id"] == "server-test-1"
    assert accepted[0]["process"] == "api"
    # Our log lines only: no uvicorn access log.
    assert not any("HTTP/1.1" in str(e.get("event")) for e in api_server.log_lines())


def test_legacy_hex_source_is_accepted_over_http(api_server: ApiProcess) -> None:
    import hashlib
    import hmac

    body = event_body()
    signature = hmac.new(TEST_HEX_SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = httpx.post(
        f"{api_server.url}/v1/events/legacy",
        content=body,
        headers={"content-type": "application/json", "x-signature": f"sha256={signature}"},
    )
    assert response.status_code == 202


def read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length body, read whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_chunked_oversized_body_is_refused_before_it_is_all_sent(api_server: ApiProcess) -> None:
    chunk = b"x" * 1024
    total_chunks = 256  # 256 KiB against an 8 KiB limit
    sent = 0
    with socket.create_connection(("127.0.0.1", api_server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/events/acme HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        while sent < total_chunks:
            readable, _, _ = select.select([sock], [], [], 0.01)
            if readable:
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"application/problem+json" in answer
    assert b'"payload_too_large"' in answer
    assert sent < total_chunks


def test_invalid_settings_exit_2_naming_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [gateway_executable(), "api"],
        env=gateway_env(
            "redis://127.0.0.1:1/0",
            "mongodb://127.0.0.1:1",
            free_port(),
            GATEWAY_MAX_BODY_BYTES="0",
        ),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"GATEWAY_MAX_BODY_BYTES" in result.stderr


def test_unreachable_redis_at_start_exits_non_zero_with_a_clear_log_line() -> None:
    port = free_port()
    result = subprocess.run(
        [gateway_executable(), "api"],
        env=gateway_env(f"redis://127.0.0.1:{free_port()}/0", "mongodb://127.0.0.1:1", port),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    failed = [
        json.loads(line) for line in result.stdout.splitlines() if b"api.startup_failed" in line
    ]
    assert failed
    assert "cannot reach Redis" in str(failed[0]["exception"])
