"""The rules-as-data helpers every built-in carrier module uses (``shared.adapters.carrier``)."""

from __future__ import annotations

import pytest

from shared.adapters.base import FieldReader
from shared.adapters.carrier import EACH, typed_decoder, vocabulary
from shared.adapters.pointer import MISSING
from shared.contracts import EventType


def test_a_vocabulary_is_looked_up_by_carrier_status() -> None:
    table = vocabulary({EventType.CREATED: ("M", "N"), EventType.DELIVERED: ("D",)})

    assert table == {"M": EventType.CREATED, "N": EventType.CREATED, "D": EventType.DELIVERED}


def test_a_status_listed_under_two_event_types_is_refused() -> None:
    with pytest.raises(ValueError, match="'D' is listed under"):
        vocabulary({EventType.DELIVERED: ("D",), EventType.DELIVERY_FAILED: ("X", "D")})


def test_a_typed_decoder_reads_only_the_pointed_fields() -> None:
    decoder = typed_decoder(("a", "b"), ("a", "items", EACH, "t"), ("c",))
    body = b'{"a": {"b": 1, "skip": [1, 2], "items": [{"t": "x", "u": 2}]}, "z": {"deep": true}}'

    reader = FieldReader(decoder.decode(body), {})

    assert reader.get(("a", "b")) == 1
    assert reader.get(("a", "items", "0", "t")) == "x"
    assert reader.get(("c",)) is MISSING  # pointed at, absent
    assert reader.get(("z",)) is MISSING  # not pointed at: skipped
    assert reader.get(("a", "skip")) is MISSING


@pytest.mark.parametrize(
    "pointers",
    [
        (("a",), ("a", "b")),
        (("a", "b"), ("a",)),
        (("a", EACH, "t"), ("a", "b")),
    ],
)
def test_a_typed_decoder_refuses_a_field_that_is_two_things(
    pointers: tuple[tuple[str, ...], ...],
) -> None:
    with pytest.raises(ValueError, match="at once"):
        typed_decoder(*pointers)
