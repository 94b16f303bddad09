"""``gateway bench-ingest``: it measures every target, holds each gateway target to the
targets of docs/contract.md §6, and refuses numbers it cannot trust.

The end-to-end test runs the real benchmark briefly (wrk, uvicorn, redis-server
and a replica) and asserts it produced numbers and verdicts, never what they
are: no timed assertions. The verdicts themselves are tested on given figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from scripts.proof.bench.ingest.model import (
    ROUTES,
    BenchError,
    BenchOptions,
    RunResult,
    WrkStats,
    targets_of,
)
from scripts.proof.bench.ingest.report import build_report, render
from scripts.proof.bench.ingest.wrk import RouteRequests, parse_wrk_output
from scripts.proof.probes import summarize_collapsed_stacks
from shared.adapters.base import Canonical, TrackingUpdate
from shared.adapters.registry import build_adapter
from shared.contracts import EventType

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:41234/v1/events/bench
  2 threads and 100 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.61ms  812.04us  41.33ms   93.12%
    Req/Sec     8.95k   402.11     9.61k    81.50%
  Latency Distribution
     50%    5.48ms
     75%    5.80ms
     90%    6.21ms
     99%    1.02s
  178123 requests in 10.01s, 33.12MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  17795.30
Transfer/sec:      3.31MB
BENCH_STATUS 178000 100 0 4 0
"""


def gateway(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 110
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "gateway"), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env=env,
    )


def test_wrk_output_is_parsed_into_rate_percentiles_and_status_counts() -> None:
    stats = parse_wrk_output(WRK_OUTPUT)
    assert stats.requests == 178123
    assert stats.duration_s == pytest.approx(10.01)
    assert stats.requests_per_s == pytest.approx(17795.30)
    assert stats.p50_ms == pytest.approx(5.48)
    assert stats.p99_ms == pytest.approx(1020.0)
    assert stats.socket_errors == 3
    assert stats.non_2xx_3xx == 4
    assert (stats.status_202, stats.status_200, stats.status_other) == (178000, 100, 4)
    assert stats.pool_wraps == 0


def test_wrk_output_without_latency_distribution_is_refused() -> None:
    without = "\n".join(line for line in WRK_OUTPUT.splitlines() if "%    " not in line)
    with pytest.raises(BenchError, match="latency distribution"):
        parse_wrk_output(without)


def test_profile_summary_ranks_frames_and_packages_by_share_of_samples() -> None:
    root = 'process 7:"python -m uvicorn";Server.run (uvicorn/server.py)'
    lines = [
        f"{root};handle (litestar/app.py);digest (hmac.py) 6",
        f"{root};handle (litestar/app.py) 3",
        f"{root};ingest_event (gateway_api/ingest.py) 1",
        "not a stack line",
    ]
    summary = summarize_collapsed_stacks(lines, top=2)
    assert summary["self"] == [("digest (hmac.py)", 60.0), ("handle (litestar/app.py)", 30.0)]
    # The launcher frames every sample passes through say nothing: left out.
    assert summary["inclusive"][0] == ("handle (litestar/app.py)", 90.0)
    assert all("uvicorn/server.py" not in frame for frame, _ in summary["inclusive"])
    assert summary["packages"] == [("hmac", 60.0), ("litestar", 30.0)]


def run(round_no: int, target: str, requests_per_s: float, us: float, p99_ms: float) -> RunResult:
    """A measured run with the figures that matter to the verdicts."""
    requests = int(requests_per_s * 10)
    wrk = WrkStats(
        requests=requests, duration_s=10.0, requests_per_s=requests_per_s, p50_ms=p99_ms / 3,
        p99_ms=p99_ms, socket_errors=0, non_2xx_3xx=0, status_202=requests, status_200=0,
        status_other_2xx=0, status_other=0, pool_wraps=0,
    )  # fmt: skip
    cpu = {"server": 100.0, "redis": 10.0, "wrk": 30.0}
    return RunResult(
        round=round_no, target=target, wrk=wrk, enqueued=0 if target == "bare" else requests,
        cpu_pct=cpu, load_avg_1m=1.0, server_us_per_request=us,
    )  # fmt: skip


@pytest.mark.parametrize("route", ROUTES)
def test_each_route_is_signed_and_shaped_so_its_own_adapter_accepts_it(route: str) -> None:
    requests = RouteRequests(route)
    adapter = build_adapter(requests.config, tolerance_s=300)
    now = 1_790_000_000.0
    seen: set[str] = set()
    for index in range(3):
        body, headers = requests.build(f"evt_r1_{index}", f"shp_{index}", now)
        adapter.verify(body, headers, now=now)
        normalised = adapter.normalise(body)
        if isinstance(normalised, Canonical):
            seen.add(normalised.event.event_id)
            assert normalised.event.event_type == EventType.IN_TRANSIT
        else:
            assert isinstance(normalised, TrackingUpdate)
            seen.add(normalised.event_id)
            assert normalised.event_type == EventType.IN_TRANSIT
    # Distinct events even where the carrier sends no id (UPS: derived): no duplicates.
    assert len(seen) == 3


def test_a_run_measures_bare_and_canonical_then_each_route_and_the_acknowledged_path() -> None:
    options = BenchOptions(routes=("standard", "easypost", "ups", "easypost"), ack_replicas=1)
    targets = targets_of(options)
    assert [t.name for t in targets] == [
        "bare", "ingest", "ingest-easypost", "ingest-ups", "ingest-ack1",
    ]  # fmt: skip
    assert [(t.route, t.ack_replicas) for t in targets][-3:] == [
        ("easypost", 0), ("ups", 0), ("standard", 1),
    ]  # fmt: skip
    assert [t.name for t in targets_of(BenchOptions())] == ["bare", "ingest"]


def test_every_round_must_reach_the_ratio_and_p99_and_the_median_cpu_ratio_must_hold() -> None:
    runs = [
        run(1, "bare", 10_000, 100.0, 20.0),
        run(1, "ingest", 6_500, 140.0, 30.0),
        run(1, "ingest-ack1", 5_000, 190.0, 60.0),
        run(2, "bare", 10_000, 100.0, 20.0),
        run(2, "ingest", 5_500, 150.0, 40.0),  # one round under 0.60: the target is missed
        run(2, "ingest-ack1", 5_000, 180.0, 45.0),
        run(3, "bare", 10_000, 100.0, 20.0),
        run(3, "ingest", 7_000, 145.0, 35.0),
        run(3, "ingest-ack1", 5_000, 185.0, 40.0),
    ]
    report = build_report(BenchOptions(rounds=3, ack_replicas=1), "now", runs, None)

    assert report.ratios == [0.65, 0.55, 0.7]
    assert report.median_ratio == 0.65  # the median alone would pass
    assert [f.cpu_ratio for f in report.rounds["ingest"]] == [1.4, 1.5, 1.45]
    verdicts = {(v.target, v.criterion): v for v in report.verdicts}
    assert set(verdicts) == {
        (target, criterion)
        for target in ("ingest", "ingest-ack1")
        for criterion in ("ratio", "p99_ms", "cpu_ratio")
    }
    assert (verdicts["ingest", "ratio"].value, verdicts["ingest", "ratio"].passed) == (0.55, False)
    assert verdicts["ingest", "p99_ms"].value == 40.0
    assert verdicts["ingest", "p99_ms"].passed
    assert verdicts["ingest", "cpu_ratio"].scope == "median"
    assert (verdicts["ingest", "cpu_ratio"].value, verdicts["ingest", "cpu_ratio"].passed) == (
        1.45,
        True,
    )
    assert verdicts["ingest-ack1", "p99_ms"].value == 60.0
    assert not verdicts["ingest-ack1", "p99_ms"].passed
    assert not verdicts["ingest-ack1", "cpu_ratio"].passed
    assert report.median["ingest"].server_us_per_request == 145.0
    assert not report.passed  # the canonical target missed the ratio in round 2

    console = Console(record=True, width=200)
    render(report, console)
    text = console.export_text()
    assert "req/s ≥ 0.60× bare, every round" in text
    assert "server CPU ≤ 1.5× bare, median" in text
    assert "0.550 ✗" in text  # round 2's ratio, marked missed
    assert "0.550× MISS" in text
    assert "60.0 ms MISS" in text
    assert text.count("ingest-ack1") >= 5  # three rounds, its median, its verdicts
    assert "MISS: canonical ingest" in text


def test_a_route_that_is_no_adapter_is_refused_before_anything_starts() -> None:
    result = gateway("bench-ingest", "--route", "carrier-pigeon")
    assert result.returncode == 2
    assert "'carrier-pigeon' is not one of" in result.stderr


def test_missing_wrk_is_reported_by_name() -> None:
    env = {**os.environ, "PATH": "/nonexistent"}
    result = gateway("bench-ingest", "--rounds", "1", env=env)
    assert result.returncode != 0
    assert "wrk is not installed" in result.stderr
    assert "apt-get install -y wrk" in result.stderr


@pytest.mark.slow
def test_benchmark_stops_when_wrk_runs_out_of_signed_requests() -> None:
    result = gateway(
        "bench-ingest", "--duration", "1", "--warmup", "0", "--rounds", "1", "--pool", "50"
    )
    assert result.returncode != 0
    assert "ran out of signed requests" in result.stderr


@pytest.mark.slow
def test_benchmark_measures_every_target_and_every_accepted_request_is_enqueued(
    tmp_path: Path,
) -> None:
    # Four servers started one after the other: minutes on a busy 2-core machine.
    result = gateway(
        "bench-ingest", "--duration", "1", "--warmup", "1", "--rounds", "1",
        "--route", "easypost", "--ack-replicas", "1", "--output", str(tmp_path),
        timeout_s=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("PASS: canonical" in result.stdout) != ("MISS: canonical" in result.stdout)

    report = json.loads((tmp_path / "bench_ingest.json").read_text())
    assert report["non_2xx"] == 0
    assert report["options"]["routes"] == ["easypost"]
    assert report["options"]["ack_replicas"] == 1
    runs = {run["target"]: run for run in report["runs"]}
    gateway_targets = {"ingest", "ingest-easypost", "ingest-ack1"}
    assert set(runs) == {"bare", *gateway_targets}
    for run in runs.values():
        wrk = run["wrk"]
        assert wrk["requests"] > 0
        assert wrk["requests_per_s"] > 0
        assert 0 < wrk["p50_ms"] <= wrk["p99_ms"]
        assert wrk["status_other"] == wrk["socket_errors"] == wrk["pool_wraps"] == 0
        assert wrk["status_200"] == 0  # unique event ids: nothing is a duplicate
        assert run["server_us_per_request"] > 0
        # Only the acknowledged target waits for the replica, once per batch of enqueues.
        assert (run["wait_calls"] > 0) == (run["target"] == "ingest-ack1")
    assert runs["bare"]["enqueued"] == 0
    for target in gateway_targets:
        assert runs[target]["enqueued"] >= runs[target]["wrk"]["status_202"] > 0
        (figures,) = report["rounds"][target]
        assert figures["ratio"] > 0
        assert figures["cpu_ratio"] > 0
        assert (tmp_path / f"wrk-round1-{target}.txt").exists()
    verdicts = {(v["target"], v["criterion"]) for v in report["verdicts"]}
    assert verdicts == {
        (target, criterion)
        for target in gateway_targets
        for criterion in ("ratio", "p99_ms", "cpu_ratio")
    }
    assert len(report["ratios"]) == 1
    assert report["median_ratio"] > 0
    for row in ("ingest-easypost", "ingest-ack1", "every round", "median"):
        assert row in result.stdout
