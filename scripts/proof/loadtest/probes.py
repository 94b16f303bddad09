"""Where the CPU goes while a load runs: per-process CPU seconds and py-spy profiles.

Used by ``gateway loadtest`` (CPU of each stack process during the load,
optional py-spy samples of the API, a worker and the embedded MongoDB) and
``gateway bench-worker`` (CPU per event). Linux ``/proc`` only.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from scripts.proof.bench.ingest import summarize_collapsed_stacks
from scripts.proof.loadtest.report import Profile

__all__ = ["CpuMeter", "ProfileRecorder", "cpu_seconds"]

_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds ``pid`` has used so far (0 when it is unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After "pid (comm)": state is fields[0]; utime and stime are fields[11] and fields[12].
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class CpuMeter:
    """CPU used by named processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        """CPU seconds per process name since :meth:`start`."""
        return {
            name: round(cpu_seconds(pid) - self._before.get(name, 0.0), 2)
            for name, pid in self.pids.items()
        }


class ProfileRecorder:
    """``py-spy record`` on several processes at once, for a fixed duration."""

    def __init__(self, py_spy: str, pids: Mapping[str, int], directory: Path) -> None:
        self.py_spy = py_spy
        self.pids = dict(pids)
        self.directory = directory
        self._running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, duration_s: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            # --nonblocking reads the stacks without pausing the process, so the
            # profiled run is barely slower than an unprofiled one.
            command = [self.py_spy, "record", "--pid", str(pid), "--nonblocking"]
            command += ["--rate", "100", "--format", "raw", "--nolineno"]
            command += ["--duration", str(duration_s), "--output", str(self._path(name))]
            self._running[name] = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )

    def finish(self, timeout_s: float = 60) -> tuple[list[Profile], list[str]]:
        """Wait for py-spy; the summaries and the errors of those that failed."""
        profiles: list[Profile] = []
        errors: list[str] = []
        for name, process in self._running.items():
            try:
                _, stderr = process.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                _, stderr = process.communicate()
            path = self._path(name)
            if process.returncode != 0 or not path.exists():
                errors.append(f"{name}: {stderr.decode(errors='replace').strip()[-300:]}")
                continue
            summary = summarize_collapsed_stacks(path.read_text().splitlines(), top=12)
            profiles.append(
                Profile(
                    process=name,
                    samples_file=str(path),
                    packages=summary["packages"],
                    self_time=summary["self"],
                    inclusive=summary["inclusive"],
                )
            )
        return profiles, errors

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.txt"
