"""Whatever arrives, adapters answer with a result or one of their own typed failures."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.adapters import aftership, easypost, shippo, shopify, ups
from shared.adapters.base import (
    Adapter,
    Canonical,
    CarrierAdapter,
    Ignored,
    Normalised,
    PayloadError,
    TrackingUpdate,
    reader_for,
)
from shared.adapters.config import ADAPTER_KINDS
from shared.signing import SignatureError
from tests.shared.adapters.carriers import CARRIERS, adapter_for, document, encode
from tests.shared.adapters.test_standard import HEX, STANDARD

ADAPTERS: list[Adapter] = [adapter_for(c.config) for c in CARRIERS] + [
    adapter_for(STANDARD),
    adapter_for(HEX),
]
HEADER_NAMES = sorted(
    {"webhook-id", "webhook-timestamp", "webhook-signature", "x-signature"}
    | {c.header for c in CARRIERS}
)

times = st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat())
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | times,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def outcome(adapter: Adapter, body: bytes) -> Normalised | PayloadError:
    try:
        return adapter.normalise(body)
    except PayloadError as exc:
        return exc


def normalise_or_fail(adapter: Adapter, body: bytes) -> None:
    result = outcome(adapter, body)
    if isinstance(result, PayloadError):
        assert result.code in ("malformed_json", "validation_failed")
        if result.code == "validation_failed":
            assert result.errors
            if adapter.kind not in ("standard", "hex"):
                assert all(e.field == "" or e.field.startswith("/") for e in result.errors)
        return
    assert isinstance(result, Canonical | TrackingUpdate | Ignored)
    if isinstance(result, TrackingUpdate):
        assert result.occurred_at.tzinfo is not None
        assert 1 <= len(result.event_id) <= 128


@settings(max_examples=200)
@given(adapter=st.sampled_from(ADAPTERS), body=st.binary(max_size=300))
def test_random_bytes_normalise_or_fail_with_a_payload_error(adapter: Adapter, body: bytes) -> None:
    normalise_or_fail(adapter, body)


@settings(max_examples=200)
@given(adapter=st.sampled_from(ADAPTERS), value=json_values)
def test_random_json_normalises_or_fails_with_a_payload_error(adapter: Adapter, value: Any) -> None:
    normalise_or_fail(adapter, msgspec.json.encode(value))


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            paths += _leaf_paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            paths += _leaf_paths(child, (*prefix, index))
    return paths


@settings(max_examples=200)
@given(data=st.data())
def test_a_carrier_example_with_any_value_replaced_normalises_or_names_fields(
    data: st.DataObject,
) -> None:
    carrier = data.draw(st.sampled_from(CARRIERS))
    doc = document(carrier.example)
    path = data.draw(st.sampled_from(_leaf_paths(doc)[1:]))
    value = data.draw(json_values)
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value

    normalise_or_fail(adapter_for(carrier.config), encode(doc))


@settings(max_examples=200)
@given(
    adapter=st.sampled_from(ADAPTERS),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), st.text(max_size=80), max_size=4),
    body=st.binary(max_size=100),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_random_headers_fail_only_with_a_signature_error(
    adapter: Adapter, headers: dict[str, str], body: bytes, now: float
) -> None:
    # No random header matches a secret or the body's HMAC.
    with pytest.raises(SignatureError) as raised:
        adapter.verify(body, headers, now=now)
    assert raised.value.code in (
        "signature_missing",
        "timestamp_out_of_tolerance",
        "signature_invalid",
    )


def test_the_fuzzed_adapters_cover_every_kind() -> None:
    assert {a.kind for a in ADAPTERS} == set(ADAPTER_KINDS)


FAST_PATHS = {m.__name__.rsplit(".", 1)[1]: m for m in (aftership, easypost, shippo, shopify, ups)}


@settings(max_examples=300)
@given(data=st.data())
def test_the_typed_fast_path_answers_exactly_as_the_untyped_reader(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(FAST_PATHS)))
    module = FAST_PATHS[name]
    carrier = next(c for c in CARRIERS if c.name == name)
    adapter = adapter_for(carrier.config)
    assert isinstance(adapter, CarrierAdapter)
    doc = document(carrier.example)
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        path = data.draw(st.sampled_from(_leaf_paths(doc)[1:]))
        node: Any = doc
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = data.draw(json_values | st.just("2026-11-22T10:15:00Z"))
    body = encode(doc)

    def answer(decoder: Any) -> object:
        try:
            return module.normalise(reader_for(body, decoder, adapter.statuses))
        except PayloadError as exc:
            return (exc.code, exc.detail, exc.errors)

    assert answer(module.RULES.decoder) == answer(None)
