"""What ``gateway loadtest`` was asked to do, and the settings its own stack runs with."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import scripts
from scripts.proof.loadtest.report import Thresholds
from shared.settings import redact_url

__all__ = ["LOCUSTFILE", "REPO_ROOT", "STACK_ENV", "LoadTestError", "LoadTestOptions"]

REPO_ROOT: Final = Path(scripts.__file__).resolve().parent.parent
LOCUSTFILE: Final = Path(__file__).resolve().parent / "locustfile.py"
STACK_ENV: Final[dict[str, str]] = {
    # Retries within seconds, not minutes, so a run drains in a bounded time:
    # delay bounds 0.2, 0.8, 3.2, 5, 5 s (full jitter), 6 attempts.
    "GATEWAY_BACKOFF_BASE_S": "0.2",
    "GATEWAY_BACKOFF_MULTIPLIER": "4",
    "GATEWAY_BACKOFF_CAP_S": "5",
    "GATEWAY_MAX_ATTEMPTS": "6",
}
"""Worker settings the load test's own stack runs with (reported in ``report.md``)."""


class LoadTestError(Exception):
    """The load test could not run (as opposed to running and missing a target)."""


@dataclass
class LoadTestOptions:
    """Everything ``gateway loadtest`` was asked to do."""

    users: int = 100
    duration_s: int = 60
    rate_per_s: float = 40.0
    spawn_rate: float | None = None
    output: Path = Path("loadtest-report")
    target: str | None = None
    workers: int = 2
    transient_rate: float = 0.2
    seed: int = 1
    duplicate_ratio: float = 0.1
    out_of_order_ratio: float = 0.1
    drain_timeout_s: float = 300.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    mongo_url: str | None = None
    mongo_db: str = "gateway"
    redis_url: str | None = None
    mock_url: str | None = None
    source: str | None = None
    port: int | None = None
    py_spy: str | None = None
    """Path of a py-spy binary: profile the API, worker-1 and the embedded MongoDB."""

    def command_line(self) -> str:
        """The ``gateway loadtest`` command that reproduces this run (URL passwords redacted)."""
        defaults = LoadTestOptions()
        args = ["gateway", "loadtest", "--users", str(self.users)]
        args += ["--duration", str(self.duration_s), "--rate", f"{self.rate_per_s:g}"]
        args += ["--workers", str(self.workers), "--transient-rate", f"{self.transient_rate:g}"]
        args += ["--seed", str(self.seed)]
        optional: list[tuple[str, object, object]] = [
            ("--spawn-rate", self.spawn_rate, defaults.spawn_rate),
            ("--duplicate-ratio", self.duplicate_ratio, defaults.duplicate_ratio),
            ("--out-of-order-ratio", self.out_of_order_ratio, defaults.out_of_order_ratio),
            ("--drain-timeout", self.drain_timeout_s, defaults.drain_timeout_s),
            ("--max-p95-ms", self.thresholds.max_p95_ms, defaults.thresholds.max_p95_ms),
            (
                "--max-error-rate",
                self.thresholds.max_error_rate,
                defaults.thresholds.max_error_rate,
            ),
            (
                "--min-recovery",
                self.thresholds.min_recovery_ratio,
                defaults.thresholds.min_recovery_ratio,
            ),
            ("--target", self.target, None),
            ("--mongo-url", self.mongo_url and redact_url(self.mongo_url), None),
            ("--mongo-db", self.mongo_db, defaults.mongo_db),
            ("--redis-url", self.redis_url and redact_url(self.redis_url), None),
            ("--mock-url", self.mock_url, None),
            ("--source", self.source, None),
            ("--py-spy", self.py_spy, None),
        ]
        for flag, value, default in optional:
            if value is not None and value != default:
                args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        args += ["--output", str(self.output)]
        return shlex.join(args)
