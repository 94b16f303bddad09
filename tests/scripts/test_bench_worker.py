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
def test_tiny_benchmark_measures_each_worker_count_the_arq_floor_and_three_round_trips(
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
    for measured in [*report["rounds"], report["arq_floor"]]:
        assert measured["events"] == 100
        assert measured["events_per_s"] > 0
        assert measured["events_per_s_per_worker"] > 0
        assert measured["worker_cpu_ms_per_event"] > 0
        # Each job is claimed (WATCH … EXEC) and finished (MULTI … EXEC) by arq.
        assert measured["redis_commands"]["watch"] >= 1
        assert measured["redis_commands"]["exec"] >= 2
    # The floor's job does nothing: it neither publishes nor touches a store.
    assert "publish" not in report["arq_floor"]["redis_commands"]
    assert report["arq_floor"]["store_cpu_pct"] is None
    trips = report["round_trips"]
    assert trips["sample"] == 10
    assert trips["max_per_event"] <= 3
    assert trips["by_command"] == {"findAndModify": 20, "update": 10}
    assert ("mongoeco" in report["store"]) == (not real_mongo)
    markdown = (output / "bench-worker.md").read_text()
    assert [row[0] for row in table_rows(markdown)] == [
        "worker processes",
        "1",
        "2",
        "arq floor (1, no-op job)",
    ]
    assert "arq floor" in result.stdout
    assert "events/s" in result.stdout
