"""``gateway bench-worker``: real worker processes drain a pre-filled queue; numbers come out.

Asserts that numbers were produced and that the happy path stays within
docs/contract.md §6's three MongoDB round trips per event — never how fast it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.proof.bench.worker import make_events
from shared.contracts import TERMINAL_STATUSES
from tests.scripts.markdown import table_rows


def test_benchmark_events_are_whole_lifecycles_with_unique_keys() -> None:
    events = make_events(40, seed=3, prefix="t")
    assert len(events) == 40
    assert len({e.idempotency_key for e in events}) == 40
    assert all(e.source == "bench" and e.idempotency_key.startswith("bench:") for e in events)
    by_shipment: dict[str, list[str]] = {}
    for queued in events:
        by_shipment.setdefault(queued.event.shipment.id, []).append(queued.event.event_type.status)
    complete = list(by_shipment.values())[:-1]  # the last one may be cut short
    assert all(statuses[0] == "created" for statuses in complete)
    assert all(statuses[-1] in TERMINAL_STATUSES for statuses in complete)


@pytest.mark.slow
def test_tiny_benchmark_measures_each_worker_count_both_floors_and_round_trips(
    tmp_path: Path,
) -> None:
    output = tmp_path / "bench"
    args = ["--events", "100", "--workers", "1,2", "--sample", "10", "--output", str(output)]
    real_mongo = os.environ.get("GATEWAY_TEST_MONGO_URL")
    if real_mongo:
        args += ["--mongo-url", real_mongo]
    result = subprocess.run(
        [sys.executable, "-m", "scripts.commands.cli", "bench-worker", *args],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads((output / "bench-worker.json").read_text())
    assert [r["workers"] for r in report["rounds"]] == [1, 2]
    batch = report["batch"]
    assert batch > 1  # the product default: batched claims and finishes
    for measured in [*report["rounds"], report["queue_floor"], report["arq_floor"]]:
        assert measured["events"] == 100
        assert measured["events_per_s"] > 0
        assert measured["events_per_s_per_worker"] > 0
        # psutil counts CPU in clock ticks: a batched no-op floor of 100 jobs may be 0.
        assert measured["worker_cpu_ms_per_event"] >= 0
    for worked in report["rounds"]:
        assert worked["worker_cpu_ms_per_event"] > 0
    for batched in [*report["rounds"], report["queue_floor"]]:
        # Jobs are claimed by one script per poll and finished by one MULTI … EXEC
        # per batch, never by arq's WATCH per job.
        assert batched["redis_commands"]["evalsha"] > 0
        assert batched["redis_commands"]["exec"] > 0
        assert "watch" not in batched["redis_commands"]
        assert batched["redis_commands_per_event"] < report["arq_floor"]["redis_commands_per_event"]
    # arq's own runs: each job claimed (WATCH … EXEC) and finished (MULTI … EXEC).
    assert report["arq_floor"]["redis_commands"]["watch"] >= 1
    assert report["arq_floor"]["redis_commands"]["exec"] >= 2
    # The floors' job does nothing: it neither publishes nor touches a store.
    for floor in (report["queue_floor"], report["arq_floor"]):
        assert "publish" not in floor["redis_commands"]
        assert floor["store_cpu_pct"] is None
    trips = report["round_trips"]
    assert trips["sample"] == 10
    assert trips["batch"] == batch
    assert trips["max_per_event"] <= 3
    # One batch of 10: claim (bulk update + read), shipments (bulk update + read), mark.
    assert trips["by_command"] == {"update": 3, "find": 2}
    assert ("mongoeco" in report["store"]) == (not real_mongo)
    markdown = (output / "bench-worker.md").read_text()
    assert [row[0] for row in table_rows(markdown)] == [
        "worker processes",
        "1",
        "2",
        f"queue floor (1, batches of {batch}, no-op)",
        "arq floor (1, arq's one-job runs, no-op)",
    ]
    assert "arq floor" in result.stdout
    assert "events/s" in result.stdout
