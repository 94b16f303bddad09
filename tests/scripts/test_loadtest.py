"""``gateway loadtest``: what the simulated couriers send, and one short real run end to end.

The end-to-end test is the CI version of the load test: the same command
with 20 users for 15 s against the 20 %-transient mock downstream. It asserts
that the report was produced and passed, never a timing of its own.

It lowers SC-004's bar from 99 % to 95 %: a short run has only ~90 events
that meet a 503, and an event exhausts its 6 attempts with probability
0.2**5 (0.03 %) once affected — about one short run in 30 would lose one event
and read 98.9 %. A broken retry path loses nearly all of them and still
fails; the 99 % itself is checked by the 60-second run (docs/load-test-proof.md).
"""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from scripts.proof.loadtest.records import LoadConfig, Recorder, SentRecord, read_records
from scripts.proof.probes import CpuMeter, cpu_seconds
from scripts.traffic.events import EventStream, plan_lifecycle, send_order
from shared.contracts import TERMINAL_STATUSES, EventType, decode_event
from shared.signing import generate_secret
from tests.scripts.commands import run_gateway

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def test_every_lifecycle_is_valid_with_rising_times_and_its_only_terminal_event_last() -> None:
    rng = random.Random(7)
    seen_types: set[EventType] = set()
    for serial in range(200):
        events = plan_lifecycle(rng, "p", serial, T0)
        decoded = [decode_event(e.body()) for e in events]
        times = [e.occurred_at for e in decoded]
        assert times == sorted(times)
        assert len(set(times)) == len(times)
        terminal = [e.event_type.status in TERMINAL_STATUSES for e in decoded]
        assert terminal == [False] * (len(events) - 1) + [True]
        assert {e.shipment.id for e in decoded} == {f"shp_p_{serial}"}
        seen_types.update(e.event_type for e in decoded)
    assert seen_types == set(EventType)


def test_out_of_order_pairs_swap_neighbours_without_overlapping() -> None:
    events = plan_lifecycle(random.Random(1), "p", 1, T0)
    swapped = send_order(events, random.Random(1), 1.0)
    ids = [e.event_id for e, _ in swapped]
    expected = [e.event_id for e in events]
    for i in range(0, len(expected) - 1, 2):
        expected[i], expected[i + 1] = expected[i + 1], expected[i]
    assert ids == expected
    assert all(flag for _, flag in swapped[: len(events) // 2 * 2])
    in_order = send_order(events, random.Random(1), 0.0)
    assert [e for e, _ in in_order] == events
    assert not any(flag for _, flag in in_order)


def test_a_resend_repeats_an_earlier_request_byte_for_byte_with_its_webhook_id() -> None:
    stream = EventStream(
        random.Random(3), "u1", duplicate_ratio=0.3, out_of_order_ratio=0.2, now=lambda: T0
    )
    sent = [stream.next() for _ in range(400)]
    originals = {o.event_id: o for o in sent if o.kind != "resend"}
    resends = [o for o in sent if o.kind == "resend"]
    assert 80 < len(resends) < 160
    for resend in resends:
        original = originals[resend.event_id]
        assert (resend.body, resend.msg_id) == (original.body, original.msg_id)
    assert len(originals) == len(sent) - len(resends)
    assert any(o.kind == "out_of_order" for o in sent)


def test_without_resends_every_request_is_a_new_event() -> None:
    stream = EventStream(random.Random(3), "u1", duplicate_ratio=0.0, out_of_order_ratio=0.0)
    sent = [stream.next() for _ in range(100)]
    assert {o.kind for o in sent} == {"new"}
    assert len({o.event_id for o in sent}) == 100


def sources_file(tmp_path: Path) -> Path:
    path = tmp_path / "sources.json"
    path.write_text(
        json.dumps(
            {"acme": {"secrets": [generate_secret()]}, "beta": {"secrets": [generate_secret()]}}
        )
    )
    return path


def test_load_config_reads_the_secret_from_the_sources_file_and_the_rest_from_loadtest_vars(
    tmp_path: Path,
) -> None:
    config = LoadConfig.from_env(
        {
            "GATEWAY_SOURCES_FILE": str(sources_file(tmp_path)),
            "LOADTEST_SOURCE": "beta",
            "LOADTEST_RATE": "25",
            "LOADTEST_DUPLICATE_RATIO": "0.2",
            "LOADTEST_RECORD_DIR": str(tmp_path / "records"),
            "LOADTEST_SEED": "9",
        }
    )
    assert (config.source, config.rate_per_s, config.duplicate_ratio) == ("beta", 25.0, 0.2)
    assert config.out_of_order_ratio == 0.1
    assert config.record_dir == tmp_path / "records"
    assert config.seed == 9
    default = LoadConfig.from_env({"GATEWAY_SOURCES_FILE": str(sources_file(tmp_path))})
    assert default.source == "acme"


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"LOADTEST_RATE": "fast"}, "LOADTEST_RATE"),
        ({"LOADTEST_DUPLICATE_RATIO": "1.5"}, "LOADTEST_DUPLICATE_RATIO"),
        ({"LOADTEST_OUT_OF_ORDER_RATIO": "-1"}, "LOADTEST_OUT_OF_ORDER_RATIO"),
        ({"LOADTEST_SOURCE": "nobody"}, "LOADTEST_SOURCE"),
    ],
)
def test_bad_load_configuration_names_the_variable(
    tmp_path: Path, variables: dict[str, str], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        LoadConfig.from_env({"GATEWAY_SOURCES_FILE": str(sources_file(tmp_path)), **variables})


def test_load_configuration_without_a_source_to_sign_for_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no source configured"):
        LoadConfig.from_env({})
    with pytest.raises(ValueError, match="GATEWAY_SOURCES_FILE"):
        LoadConfig.from_env({"GATEWAY_SOURCES_FILE": str(tmp_path / "missing.json")})


def test_records_written_by_several_processes_are_read_back_together(tmp_path: Path) -> None:
    first = Recorder(tmp_path)
    first.write(SentRecord(key="acme:e1", shipment="acme:s1", status=202, kind="new", ms=3.5))
    first.close()
    (tmp_path / "requests-999999.jsonl").write_bytes(
        msgspec.json.encode(
            SentRecord(key="acme:e1", shipment="acme:s1", status=200, kind="resend", ms=2.0)
        )
        + b"\n\n"
    )
    records = read_records(tmp_path)
    assert sorted((r.status, r.kind) for r in records) == [(200, "resend"), (202, "new")]


def test_cpu_of_a_process_is_read_from_proc_and_a_vanished_process_counts_as_none() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert cpu_seconds(None) == 0.0
    assert cpu_seconds(2**22 + 12345) == 0.0  # above pid_max: no such process
    meter = CpuMeter({"me": os.getpid()})
    meter.start()
    busy_until = cpu_seconds(os.getpid()) + 0.05
    while cpu_seconds(os.getpid()) < busy_until:
        pass
    assert meter.stop()["me"] >= 0.05


@pytest.mark.slow
def test_short_load_test_against_a_transiently_failing_downstream_passes_every_criterion(
    tmp_path: Path,
) -> None:
    output = tmp_path / "report"
    args = ["--users", "20", "--duration", "15", "--output", str(output), "--drain-timeout", "40"]
    args += ["--min-recovery", "0.95"]
    result = run_gateway("loadtest", args, timeout=110, clear_env=("GATEWAY_", "LOADTEST_"))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    for name in ("report.md", "report.json", "locust.html", "locust.json"):
        assert (output / name).is_file(), name
    report = json.loads((output / "report.json").read_text())
    assert report["passed"] is True
    assert {c["id"]: c["passed"] for c in report["criteria"]} == {
        "SC-001": True,
        "SC-002": True,
        "SC-003": True,
        "SC-004": True,
    }
    by_kind = report["requests"]["by_kind"]
    assert set(by_kind["resend"]) == {"200"}
    assert set(by_kind["out_of_order"]) == {"202"}
    recovery = next(c for c in report["criteria"] if c["id"] == "SC-004")["details"]
    assert recovery["affected"] > 0
    assert "PASS" in result.stdout
    assert "# Load test report — PASS" in (output / "report.md").read_text()
