"""``gateway bench-ingest``: it measures both targets, and refuses numbers it cannot trust.

The end-to-end test runs the real benchmark briefly (wrk, uvicorn, redis-server)
and asserts it produced numbers, never what they are: no timed assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.proof.bench.ingest.model import BenchError
from scripts.proof.bench.ingest.wrk import parse_wrk_output
from scripts.proof.probes import summarize_collapsed_stacks

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


def gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "gateway"), *args],
        capture_output=True,
        text=True,
        timeout=110,
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
def test_benchmark_measures_both_targets_and_every_ingest_request_is_enqueued(
    tmp_path: Path,
) -> None:
    result = gateway(
        "bench-ingest", "--duration", "1", "--warmup", "1", "--rounds", "1",
        "--output", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("PASS" in result.stdout) != ("MISS" in result.stdout)

    report = json.loads((tmp_path / "bench_ingest.json").read_text())
    assert report["non_2xx"] == 0
    runs = {run["target"]: run for run in report["runs"]}
    assert set(runs) == {"bare", "ingest"}
    for run in runs.values():
        wrk = run["wrk"]
        assert wrk["requests"] > 0
        assert wrk["requests_per_s"] > 0
        assert 0 < wrk["p50_ms"] <= wrk["p99_ms"]
        assert wrk["status_other"] == wrk["socket_errors"] == wrk["pool_wraps"] == 0
        assert wrk["status_200"] == 0  # unique event ids: nothing is a duplicate
    assert runs["bare"]["enqueued"] == 0
    assert runs["ingest"]["enqueued"] >= runs["ingest"]["wrk"]["status_202"] > 0
    assert len(report["ratios"]) == 1
    assert report["median_ratio"] > 0
    assert (tmp_path / "wrk-round1-ingest.txt").exists()
