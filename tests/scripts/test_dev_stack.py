"""A newcomer's first command starts the whole stack, which processes an event
end to end and leaves nothing behind on Ctrl-C.

The README's first command runs as a subprocess in a copy of the repository
(the tracked and not-ignored files, as a fresh clone would have them), with its
own virtual environment, exactly as a newcomer would run it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from pymongo import MongoClient

from scripts.harness.services import free_port, port_is_open
from shared.settings import load_settings
from shared.signing import signed_headers
from tests.scripts.newcomer import first_command, newcomer_checkout

pytestmark = pytest.mark.slow


class Output:
    """Collects a process's output lines on a thread so the test never blocks on a pipe."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def close(self) -> None:
        """Wait for the end of the output (the process has exited) and close the pipe."""
        self._thread.join(timeout=10)
        self._stream.close()

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match
            time.sleep(0.1)
        raise AssertionError(
            f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines[-60:])
        )

    def json_lines(self) -> Iterator[dict[str, Any]]:
        for line in self.lines:
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def descendants(root: int) -> set[int]:
    """Every live process below ``root``."""
    try:
        return {child.pid for child in psutil.Process(root).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_readme_first_command_runs_an_event_end_to_end_and_ctrl_c_stops_everything(
    repo_root: Path, tmp_path: Path
) -> None:
    port = free_port()
    checkout, env = newcomer_checkout(repo_root, tmp_path, port)
    # Run as a terminal would: the command's own process leads the process group
    # (through `sh -c`, the shell would be the one to receive the Ctrl-C).
    process = subprocess.Popen(
        shlex.split(first_command(repo_root)),
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = Output(process.stdout)
    try:
        output.wait_for(r"Press Ctrl-C to stop\.", timeout_s=240)
        env_file = Path(output.wait_for(r"set -a; \. (\S+); set \+a", 1).group(1))
        stack_env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        sources_file = stack_env["GATEWAY_SOURCES_FILE"]
        mongo_url = output.wait_for(r"MongoDB\s+(mongodb://\S+)", 1).group(1)
        worker_ports = [
            int(p)
            for p in re.findall(
                r"worker-\d+ metrics http://127\.0\.0\.1:(\d+)", "\n".join(output.lines)
            )
        ]
        redis_port = int(output.wait_for(r"Redis\s+redis://127\.0\.0\.1:(\d+)", 1).group(1))
        mongo_port = int(output.wait_for(r"mongodb://127\.0\.0\.1:(\d+)", 1).group(1))
        assert len(worker_ports) == 2
        stack_pids = descendants(process.pid)

        config = load_settings({"GATEWAY_SOURCES_FILE": sources_file}).sources["dev"]
        body = json.dumps(
            {
                "event_id": "evt_e2e_1",
                "event_type": "shipment.created",
                "occurred_at": "2026-11-22T10:15:00Z",
                "shipment": {"id": "shp_e2e", "order_id": "ord_e2e"},
            }
        ).encode()
        headers = signed_headers(config.secrets[0], "msg_e2e_1", body, time.time())
        headers["content-type"] = "application/json"
        api = f"http://127.0.0.1:{port}"
        response = httpx.post(f"{api}/v1/events/dev", content=body, headers=headers, timeout=10)
        assert response.status_code == 202, response.text
        request_id = response.json()["request_id"]

        client: MongoClient[dict[str, Any]]
        with MongoClient(mongo_url, serverSelectionTimeoutMS=5000) as client:
            deadline = time.monotonic() + 30
            status: object = None
            while time.monotonic() < deadline and status != "succeeded":
                document = client.gateway.processed_events.find_one({"_id": "dev:evt_e2e_1"})
                status = None if document is None else document.get("status")
                time.sleep(0.2)
            assert status == "succeeded"

        api_metrics = httpx.get(f"{api}/metrics", timeout=5).text
        assert metric(api_metrics, "gateway_events_accepted_total", source="dev") == 1
        worker_metrics = "\n".join(
            httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=5).text for p in worker_ports
        )
        assert metric(worker_metrics, "gateway_worker_jobs_total", outcome="succeeded") == 1

        accepted = [line for line in output.json_lines() if line.get("event") == "event.accepted"]
        succeeded = [line for line in output.json_lines() if line.get("event") == "job.succeeded"]
        assert [line["request_id"] for line in accepted] == [request_id]
        assert [line["request_id"] for line in succeeded] == [request_id]
        assert accepted[0]["process"] == "api"
        assert succeeded[0]["process"] == "worker"
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            exit_code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        finally:
            output.close()
    assert exit_code == 0, "\n".join(output.lines[-40:])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in stack_pids):
        time.sleep(0.1)
    assert [pid for pid in stack_pids if alive(pid)] == []
    for listening in (port, redis_port, mongo_port, *worker_ports):
        assert not port_is_open(listening), listening
