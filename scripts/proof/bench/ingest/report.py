"""``gateway bench-ingest``'s results: the medians and ratios of a run, and their table."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from scripts.proof.bench.ingest.model import (
    TARGET_P99_MS,
    TARGET_RATIO,
    BenchOptions,
    BenchReport,
    RunResult,
    Target,
    TargetProfile,
    TargetSummary,
)

__all__ = [
    "build_report",
    "render",
]


def _machine() -> dict[str, str | int]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        found = re.search(r"^Model name:\s+(.+)$", lscpu, flags=re.MULTILINE)
        if found:
            model = found.group(1).strip()
    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def build_report(
    options: BenchOptions,
    started_at: str,
    runs: list[RunResult],
    profile: dict[str, TargetProfile] | None,
) -> BenchReport:
    by_round: dict[int, dict[Target, RunResult]] = {}
    for run in runs:
        by_round.setdefault(run.round, {})[run.target] = run
    ratios = [
        round(pair["ingest"].wrk.requests_per_s / pair["bare"].wrk.requests_per_s, 3)
        for _, pair in sorted(by_round.items())
    ]
    median: dict[str, TargetSummary] = {}
    for target in ("bare", "ingest"):
        mine = [r.wrk for r in runs if r.target == target]
        median[target] = TargetSummary(
            requests_per_s=round(_median([w.requests_per_s for w in mine]), 1),
            p50_ms=round(_median([w.p50_ms for w in mine]), 2),
            p99_ms=round(_median([w.p99_ms for w in mine]), 2),
        )
    median_ratio = round(_median(ratios), 3)
    return BenchReport(
        started_at=started_at,
        machine=_machine(),
        options={
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "rounds": options.rounds,
            "connections": options.connections,
            "threads": options.threads,
            "server_workers": options.server_workers,
            "server_cpus": options.server_cpus,
            "redis_cpus": options.redis_cpus,
            "client_cpus": options.client_cpus,
            "ingest_factory": options.ingest_factory,
            "profile": options.profile,
        },
        runs=runs,
        ratios=ratios,
        median=median,
        median_ratio=median_ratio,
        passed=median_ratio >= TARGET_RATIO and median["ingest"].p99_ms < TARGET_P99_MS,
        non_2xx=sum(r.non_2xx for r in runs),
        disturbed_rounds=sorted({r.round for r in runs if r.disturbed}),
        profile=profile,
    )


def render(report: BenchReport, console: Console) -> None:
    """The results table, the verdict and (with --profile) the top frames."""
    table = Table(title="ingest vs bare Litestar endpoint (requests/s, latency in ms)")
    columns = ("round", "target", "req/s", "p50", "p99", "2xx", "non-2xx", "queued", "ratio")
    for column in (*columns, "cpu% server/redis/wrk"):
        table.add_column(column, justify="right")
    ratios = dict(enumerate(report.ratios, start=1))
    for run in report.runs:
        is_ingest = run.target == "ingest"
        table.add_row(
            str(run.round),
            run.target,
            f"{run.wrk.requests_per_s:,.0f}",
            f"{run.wrk.p50_ms:.2f}",
            f"{run.wrk.p99_ms:.2f}",
            f"{run.wrk.status_202 + run.wrk.status_200 + run.wrk.status_other_2xx:,}",
            str(run.non_2xx),
            f"{run.enqueued:,}",
            f"{ratios[run.round]:.3f}" if is_ingest else "",
            "/".join(f"{run.cpu_pct[name]:.0f}" for name in ("server", "redis", "wrk"))
            + (" !" if run.disturbed else ""),
        )
    for target, summary in report.median.items():
        table.add_row(
            "median",
            target,
            f"{summary.requests_per_s:,.0f}",
            f"{summary.p50_ms:.2f}",
            f"{summary.p99_ms:.2f}",
            "",
            "",
            "",
            f"{report.median_ratio:.3f}" if target == "ingest" else "",
            "",
            style="bold",
        )
    console.print(table)
    for run in report.runs:
        if run.disturbed:
            console.print(
                f"[bold yellow]warning: round {run.round} {run.target} is disturbed: its server "
                f"got {run.cpu_pct['server']:.0f}% of its core (other load on the machine); "
                "rerun on a quiet machine"
            )
    verdict = "PASS" if report.passed else "MISS"
    console.print(
        f"{verdict}: ingest {report.median_ratio:.3f}× the bare endpoint (target ≥ "
        f"{TARGET_RATIO:.2f}×), ingest p99 {report.median['ingest'].p99_ms:.2f} ms "
        f"(target < {TARGET_P99_MS:.0f} ms)"
    )
    if report.profile:
        _render_profile(report.profile, console)


def _render_profile(profile: dict[str, TargetProfile], console: Console) -> None:
    bare, ingest = profile["bare"], profile["ingest"]
    console.print(
        f"server CPU per request: bare {bare.us_per_request:.0f} µs, ingest "
        f"{ingest.us_per_request:.0f} µs (profiled runs: {bare.requests_per_s:,.0f} and "
        f"{ingest.requests_per_s:,.0f} req/s)"
    )
    by_package = Table(title="self CPU by package, µs per request (py-spy samples)")
    for column in ("package", "bare", "ingest", "ingest − bare"):
        by_package.add_column(column, justify="left" if column == "package" else "right")
    bare_us = {name: pct * bare.us_per_request / 100 for name, pct in bare.packages}
    ingest_us = {name: pct * ingest.us_per_request / 100 for name, pct in ingest.packages}
    for name in sorted(set(bare_us) | set(ingest_us), key=lambda n: -ingest_us.get(n, 0)):
        b, i = bare_us.get(name, 0.0), ingest_us.get(name, 0.0)
        if max(b, i) >= 0.5:
            by_package.add_row(name, f"{b:.1f}", f"{i:.1f}", f"{i - b:+.1f}")
    b, i = bare.us_per_request, ingest.us_per_request
    by_package.add_row("all (server CPU)", f"{b:.1f}", f"{i:.1f}", f"{i - b:+.1f}", style="bold")
    console.print(by_package)
    for title, frames in (
        ("self time", ingest.self_time),
        ("inclusive time", ingest.inclusive),
    ):
        table = Table(title=f"ingest server, top frames by {title}")
        table.add_column("%", justify="right")
        table.add_column("µs/req", justify="right")
        table.add_column("frame")
        for name, pct in frames:
            table.add_row(f"{pct:.1f}", f"{pct * ingest.us_per_request / 100:.1f}", name)
        console.print(table)
