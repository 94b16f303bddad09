"""What the proof tooling measures beside its own numbers: per-process CPU seconds
(psutil), py-spy profiles summarised by frame and package, and which MongoDB it ran on.

Used by ``gateway loadtest`` (CPU of each stack process during the load,
optional py-spy samples of the API, a worker and the embedded MongoDB),
``gateway bench-worker`` (CPU per event) and ``gateway bench-ingest`` (server
CPU, profiles of the bare and the gateway app).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
from msgspec import Struct
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from shared.settings import redact_url

__all__ = [
    "CommandCounter",
    "CpuMeter",
    "Profile",
    "ProfileRecorder",
    "cpu_seconds",
    "describe_store",
    "find_py_spy",
    "summarize_collapsed_stacks",
]


class Profile(Struct, frozen=True, kw_only=True):
    """py-spy's samples of one process, summarised (shares in % of samples)."""

    process: str
    samples_file: str
    packages: list[tuple[str, float]]
    self_time: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]


def cpu_seconds(pid: int | None, *, with_descendants: bool = False) -> float:
    """User + system CPU seconds ``pid`` (and its live descendants) used so far.

    0 when ``pid`` is unknown or gone; a descendant that exits while being read
    is left out.
    """
    if pid is None:
        return 0.0
    try:
        process = psutil.Process(pid)
        tree = [process, *process.children(recursive=True)] if with_descendants else [process]
    except psutil.Error:
        return 0.0
    total = 0.0
    for member in tree:
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            total += times.user + times.system
    return total


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


# Frames every sample of the main thread passes through: 100% inclusive, no information.
_LAUNCHER_FRAME = re.compile(
    r"\((<frozen runpy>|click/core\.py|uvicorn/main\.py|uvicorn/__main__\.py"
    r"|uvicorn/server\.py|asyncio/runners\.py)\)$"
)


def summarize_collapsed_stacks(
    lines: Sequence[str], *, top: int = 15
) -> dict[str, list[tuple[str, float]]]:
    """Top frames by self and inclusive share, and self share by package, of py-spy raw output.

    Each line is ``frame;frame;...;leaf count`` (``--format raw``); shares are
    percentages of all samples.
    """
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, raw_count = line.rstrip().rpartition(" ")
        if not stack or not raw_count.isdigit():
            continue
        count = int(raw_count)
        # --subprocesses roots every stack in a "process <pid>:<command>" pseudo-frame.
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        packages[_package_of(frames[-1])] += count
        for frame in set(frames):
            if not _LAUNCHER_FRAME.search(frame):
                inclusive[frame] += count
    if total == 0:
        return {"self": [], "inclusive": [], "packages": []}

    def share(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(limit)]

    return {
        "self": share(self_time, top),
        "inclusive": share(inclusive, top * 2),
        "packages": share(packages, top),
    }


def _package_of(frame: str) -> str:
    """``handle (litestar/routes/http.py)`` -> ``litestar``; ``digest (hmac.py)`` -> ``hmac``.

    py-spy shortens paths to the module path below ``sys.path``, so the first
    component names the package (a standard-library module names itself).
    """
    match = re.search(r"\(([^)]*)\)$", frame)
    if match is None:
        return frame
    path = match.group(1).split(":")[0]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith("/"):
        return Path(path).stem
    return path.split("/", 1)[0].removesuffix(".py")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def describe_store(mongo_url: str, *, embedded: bool, unreachable_ok: bool = True) -> str:
    """Which MongoDB a run measured: the embedded emulation or a real server (version).

    An unreachable server is described as such, or with ``unreachable_ok=False``
    its :class:`~pymongo.errors.PyMongoError` is raised.
    """
    if embedded:
        return (
            f"mongoeco at {mongo_url} — the embedded, in-memory MongoDB-wire emulation "
            "(one Python process), not a real MongoDB"
        )
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
        with client:
            info = client.admin.command("buildInfo")
    except PyMongoError as exc:
        if not unreachable_ok:
            raise
        return f"MongoDB at {redact_url(mongo_url)} (version unknown: {type(exc).__name__})"
    if info.get("gitVersion") == "mongoeco":
        return f"mongoeco at {redact_url(mongo_url)} (MongoDB-wire emulation, not a real MongoDB)"
    return f"MongoDB {info.get('version', '?')} at {redact_url(mongo_url)}"


class CommandCounter(CommandListener):
    """The names of the commands a PyMongo client sends, in order (command monitoring)."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: CommandStartedEvent) -> None:
        self.commands.append(event.command_name)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass
