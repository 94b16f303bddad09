"""The traffic generator's carrier dialects: what the gateway files each request under.

For every dialect of :mod:`scripts.traffic.carriers`, the adapter of a source
configured as :func:`traffic_sources` configures it normalises each generated
body to the event id, shipment and event type the generator recorded, so the
load test, the chaos run and the demo find carrier events' outcomes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from scripts.proof.loadtest.records import LoadConfig
from scripts.traffic.carriers import CANONICAL_SOURCE, CARRIER_ADAPTERS, render, traffic_sources
from scripts.traffic.events import EventStream, ShipmentPlanner
from shared.adapters.base import Canonical, TrackingUpdate
from shared.adapters.config import parse_source_config
from shared.adapters.registry import build_adapter
from shared.contracts import EventType

SOURCES = traffic_sources()


def test_the_stacks_mix_is_canonical_plus_easypost_ups_and_aftership() -> None:
    assert list(SOURCES) == [CANONICAL_SOURCE, *CARRIER_ADAPTERS]
    assert set(CARRIER_ADAPTERS) == {"easypost", "ups", "aftership"}
    kinds = {name: parse_source_config(name, raw).kind for name, raw in SOURCES.items()}
    assert kinds == {
        "dev": "standard",
        "easypost": "easypost",
        "ups": "ups",
        "aftership": "aftership",
    }


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_generated_request_normalises_to_what_the_generator_recorded(name: str) -> None:
    config = parse_source_config(name, SOURCES[name])
    adapter = build_adapter(config, tolerance_s=300)
    planner = ShipmentPlanner(random.Random(5), "mix", parallel=10)
    seen_types: set[EventType] = set()
    for _ in range(400):
        planned = planner.next()
        rendered = render(planned, config.kind)
        result = adapter.normalise(rendered.body)
        event_type: EventType | None
        if isinstance(result, Canonical):
            event_id, shipment, event_type = (
                result.event.event_id,
                result.event.shipment.id,
                result.event.event_type,
            )
        else:
            assert isinstance(result, TrackingUpdate), result
            event_id, shipment, event_type = result.event_id, result.shipment_id, result.event_type
        assert (event_id, shipment) == (rendered.event_id, rendered.shipment_id)
        assert event_type is planned.event_type, (name, planned.event_type)
        seen_types.add(planned.event_type)
    assert seen_types == set(EventType)


def test_a_ups_resend_is_the_same_derived_id_and_a_new_status_a_new_one() -> None:
    stream = EventStream(
        random.Random(2), "u", duplicate_ratio=0.0, out_of_order_ratio=0.0, adapter="ups"
    )
    first, second = stream.next(), stream.next()
    assert first.event_id.startswith("drv_")
    assert first.event_id != second.event_id
    assert first.shipment_id == second.shipment_id  # one lifecycle, one tracking number


def test_load_users_are_spread_over_every_configured_source(tmp_path: Path) -> None:
    path = tmp_path / "sources.json"
    path.write_text(json.dumps(SOURCES))
    config = LoadConfig.from_env({"GATEWAY_SOURCES_FILE": str(path)})
    assert [name for name, _ in config.sources] == list(SOURCES)
    only = LoadConfig.from_env({"GATEWAY_SOURCES_FILE": str(path), "LOADTEST_SOURCE": "ups,dev"})
    assert [name for name, _ in only.sources] == ["ups", "dev"]
