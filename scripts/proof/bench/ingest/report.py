"""``gateway bench-ingest``'s results: the medians and ratios of a run, and their table."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence
from typing import Final

from rich.console import Console
from rich.table import Table

from scripts.proof.bench.ingest.model import (
    BARE,
    CANONICAL,
    TARGET_CPU_RATIO,
    TARGET_P99_MS,
    TARGET_RATIO,
    BenchOptions,
    BenchReport,
    RoundFigures,
    RunResult,
    TargetProfile,
    TargetSummary,
    Verdict,
)

__all__ = [
    "build_report",
    "render",
    "verdicts_of",
]

_FORMATS: Final = {"ratio": "{:.3f}×", "p99_ms": "{:.1f} ms", "cpu_ratio": "{:.2f}×"}
CRITERIA: Final = {
    "ratio": f"req/s ≥ {TARGET_RATIO:.2f}× bare, every round",
    "p99_ms": f"p99 < {TARGET_P99_MS:.0f} ms, every round",
    "cpu_ratio": f"server CPU ≤ {TARGET_CPU_RATIO:.1f}× bare, median",
}
"""The targets of docs/contract.md §6 each gateway target is held to, as the table names them."""


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


def _per(value: float, bare: float) -> float:
    # A bare figure of 0 (nothing measured) must not read as a met target.
    return round(value / bare, 3) if bare > 0 else float("nan")


def verdicts_of(target: str, figures: Sequence[RoundFigures]) -> list[Verdict]:
    """``target`` against each of ``CRITERIA``: the worst round, or the median of the rounds."""
    worst_ratio = min(f.ratio for f in figures)
    worst_p99 = max(f.p99_ms for f in figures)
    cpu_ratio = round(_median([f.cpu_ratio for f in figures]), 3)
    return [
        Verdict(target, "ratio", "every round", TARGET_RATIO, worst_ratio,
                worst_ratio >= TARGET_RATIO),
        Verdict(target, "p99_ms", "every round", TARGET_P99_MS, worst_p99,
                worst_p99 < TARGET_P99_MS),
        Verdict(target, "cpu_ratio", "median", TARGET_CPU_RATIO, cpu_ratio,
                cpu_ratio <= TARGET_CPU_RATIO),
    ]  # fmt: skip


def build_report(
    options: BenchOptions,
    started_at: str,
    runs: list[RunResult],
    profile: dict[str, TargetProfile] | None,
) -> BenchReport:
    by_round: dict[int, dict[str, RunResult]] = {}
    for run in runs:
        by_round.setdefault(run.round, {})[run.target] = run
    names = list(dict.fromkeys(run.target for run in runs))
    rounds = {
        name: [
            RoundFigures(
                round=round_no,
                ratio=_per(pair[name].wrk.requests_per_s, pair[BARE.name].wrk.requests_per_s),
                cpu_ratio=_per(
                    pair[name].server_us_per_request, pair[BARE.name].server_us_per_request
                ),
                p99_ms=pair[name].wrk.p99_ms,
            )
            for round_no, pair in sorted(by_round.items())
        ]
        for name in names
        if name != BARE.name
    }
    median: dict[str, TargetSummary] = {}
    for name in names:
        mine = [r for r in runs if r.target == name]
        median[name] = TargetSummary(
            requests_per_s=round(_median([r.wrk.requests_per_s for r in mine]), 1),
            p50_ms=round(_median([r.wrk.p50_ms for r in mine]), 2),
            p99_ms=round(_median([r.wrk.p99_ms for r in mine]), 2),
            server_us_per_request=round(_median([r.server_us_per_request for r in mine]), 1),
        )
    verdicts = [v for name, figures in rounds.items() for v in verdicts_of(name, figures)]
    ratios = [f.ratio for f in rounds[CANONICAL.name]]
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
            "routes": list(options.routes),
            "ack_replicas": options.ack_replicas,
            "profile": options.profile,
        },
        runs=runs,
        ratios=ratios,
        median=median,
        median_ratio=round(_median(ratios), 3),
        passed=all(v.passed for v in verdicts if v.target == CANONICAL.name),
        non_2xx=sum(r.non_2xx for r in runs),
        disturbed_rounds=sorted({r.round for r in runs if r.disturbed}),
        profile=profile,
        rounds=rounds,
        verdicts=verdicts,
    )


def _mark(missed: bool) -> str:
    return " ✗" if missed else ""


def render(report: BenchReport, console: Console) -> None:
    """The results table, the verdicts and (with --profile) the top frames."""
    table = Table(title="gateway targets vs bare Litestar endpoint (latency in ms, ✗ missed)")
    columns = ("round", "target", "req/s", "p50", "p99", "2xx", "non-2xx", "queued", "ratio")
    for column in (*columns, "µs/req", "CPU ×", "cpu% server/redis/wrk"):
        table.add_column(column, justify="right")
    figures = {(f.round, name): f for name, per_round in report.rounds.items() for f in per_round}
    for run in report.runs:
        mine = figures.get((run.round, run.target))
        table.add_row(
            str(run.round),
            run.target,
            f"{run.wrk.requests_per_s:,.0f}",
            f"{run.wrk.p50_ms:.2f}",
            f"{run.wrk.p99_ms:.2f}" + _mark(mine is not None and mine.p99_ms >= TARGET_P99_MS),
            f"{run.wrk.status_202 + run.wrk.status_200 + run.wrk.status_other_2xx:,}",
            str(run.non_2xx),
            f"{run.enqueued:,}",
            "" if mine is None else f"{mine.ratio:.3f}" + _mark(not mine.ratio >= TARGET_RATIO),
            f"{run.server_us_per_request:.0f}",
            "" if mine is None else f"{mine.cpu_ratio:.2f}",
            "/".join(f"{run.cpu_pct[name]:.0f}" for name in ("server", "redis", "wrk"))
            + (" !" if run.disturbed else ""),
        )
    for target, summary in report.median.items():
        per_round = report.rounds.get(target)
        table.add_row(
            "median",
            target,
            f"{summary.requests_per_s:,.0f}",
            f"{summary.p50_ms:.2f}",
            f"{summary.p99_ms:.2f}",
            "",
            "",
            "",
            "" if not per_round else f"{_median([f.ratio for f in per_round]):.3f}",
            f"{summary.server_us_per_request:.0f}",
            "" if not per_round else f"{_median([f.cpu_ratio for f in per_round]):.2f}",
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
    _render_verdicts(report, console)
    if report.profile:
        _render_profile(report.profile, console)


def _render_verdicts(report: BenchReport, console: Console) -> None:
    table = Table(title="docs/contract.md §6 targets (every round: the worst round's figure)")
    table.add_column("target")
    for criterion in (*CRITERIA.values(), "verdict"):
        table.add_column(criterion, justify="right")
    by_target: dict[str, list[Verdict]] = {}
    for verdict in report.verdicts:
        by_target.setdefault(verdict.target, []).append(verdict)
    for target, verdicts in by_target.items():
        cells = {
            v.criterion: f"{_FORMATS[v.criterion].format(v.value)} {'PASS' if v.passed else 'MISS'}"
            for v in verdicts
        }
        passed = all(v.passed for v in verdicts)
        table.add_row(
            target,
            *(cells.get(criterion, "") for criterion in CRITERIA),
            "PASS" if passed else "MISS",
            style="bold" if target == CANONICAL.name else None,
        )
    console.print(table)
    canonical = report.median[CANONICAL.name]
    outcome = "PASS" if report.passed else "MISS"
    console.print(
        f"{outcome}: canonical ingest, req/s {report.median_ratio:.3f}× "
        f"the bare endpoint (median; rounds {' '.join(f'{r:.3f}' for r in report.ratios)}), "
        f"server CPU {canonical.server_us_per_request:.0f} µs against "
        f"{report.median[BARE.name].server_us_per_request:.0f} µs per request, "
        f"p99 {canonical.p99_ms:.2f} ms (median)"
    )


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
