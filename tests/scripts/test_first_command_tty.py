"""The README's first command, run in a terminal, stops gracefully on Ctrl-C.

A terminal's Ctrl-C is not one signal to one process: the kernel sends SIGINT
to the whole foreground process group of the terminal. This test gives the
command a real pseudo-terminal as its controlling terminal (``setsid`` +
``TIOCSCTTY``), writes the interrupt character to the terminal's master side as
a keyboard would, and checks that the supervisor stopped every process it
started within seconds, each worker logging its graceful stop.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from scripts.harness.services import free_port
from tests.scripts.newcomer import first_command, newcomer_checkout

pytestmark = pytest.mark.slow

CTRL_C = b"\x03"
STOP_WITHIN_S = 10.0


def _take_terminal() -> None:  # pragma: no cover - runs in the child before exec
    # start_new_session made the child a session leader; the pty slave (its
    # stdin) becomes that session's controlling terminal and the child's
    # process group the terminal's foreground group, as a shell's job would be.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """The master side of a pseudo-terminal: what the user types, what they see."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.text = ""

    def read(self, timeout_s: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if ready:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the slave has exited
                return
            self.text += chunk.decode(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.text):
                return match
            self.read(0.2)
        raise AssertionError(f"no {pattern!r} on the terminal; it shows:\n{self.text[-4000:]}")

    def banner_line(self, pattern: str) -> str:
        """The banner line (indentation stripped) matching ``pattern``."""
        for line in self.text.splitlines():
            if re.fullmatch(pattern, line.strip()):
                return line.strip()
        raise AssertionError(f"no banner line matching {pattern!r}:\n{self.text[-4000:]}")

    def wait_until_gone(self, processes: list[psutil.Process], timeout_s: float) -> list[int]:
        """Keep showing the output (a full pty blocks its writers) until ``processes`` exit."""
        deadline = time.monotonic() + timeout_s
        alive = processes
        while alive and time.monotonic() < deadline:
            self.read(0.05)
            _, alive = psutil.wait_procs(alive, timeout=0)
        return [p.pid for p in alive]

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.text.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return events


def test_ctrl_c_in_a_terminal_stops_the_whole_stack_gracefully_within_seconds(
    repo_root: Path, tmp_path: Path
) -> None:
    checkout, env = newcomer_checkout(repo_root, tmp_path, free_port())
    env["TERM"] = "dumb"
    master, slave = os.openpty()
    process = subprocess.Popen(
        ["bash", "-c", f"exec {first_command(repo_root)}"],
        cwd=checkout,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_take_terminal,
    )
    os.close(slave)
    terminal = Terminal(master)
    stack: list[psutil.Process] = []
    try:
        terminal.wait_for(r"Press Ctrl-C to stop\.", timeout_s=240)
        workers = len(re.findall(r"worker-\d+ metrics http://", terminal.text))
        assert workers == 2, terminal.text[-4000:]
        stack = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
        assert os.tcgetpgrp(master) == process.pid  # the command is the foreground job

        # The banner's commands work as printed, from another shell elsewhere.
        other_shell = {k: v for k, v in env.items() if k not in ("GATEWAY_PORT", "UV")}
        talk = subprocess.run(
            [
                "bash",
                "-ec",
                terminal.banner_line(r"set -a; \. \S+; set \+a")
                + "\n"
                + terminal.banner_line(r".+ demo +# or: .+").split("#")[0],
            ],
            cwd=tmp_path,
            env=other_shell,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert talk.returncode == 0, talk.stdout + talk.stderr

        os.write(master, CTRL_C)
        interrupted = time.monotonic()
        still_alive = terminal.wait_until_gone(stack, STOP_WITHIN_S)
        stopped_after_s = time.monotonic() - interrupted
        assert still_alive == [], (
            f"alive {STOP_WITHIN_S} s after Ctrl-C: {still_alive}\n" + terminal.text[-4000:]
        )
        terminal.read(0.5)
    finally:
        for leftover in stack:
            if leftover.is_running():
                leftover.kill()
        process.wait(timeout=10)
        os.close(master)
    assert process.returncode == 0, terminal.text[-4000:]
    assert stopped_after_s < STOP_WITHIN_S
    stops = [e for e in terminal.log_events() if e.get("event") == "worker.stopped"]
    assert len(stops) == workers, terminal.text[-4000:]
    assert len({e["worker_id"] for e in stops}) == workers
    assert "stopped." in terminal.text
