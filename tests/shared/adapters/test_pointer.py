"""JSON Pointer (RFC 6901) parsing and resolution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.adapters.pointer import (
    MISSING,
    PointerSyntaxError,
    parse_pointer,
    resolve,
    to_pointer,
)

DOCUMENT = {
    "items": ["zero", "one"],
    "": "empty key",
    "a/b": 1,
    "c%d": 2,
    "m~n": 3,
    " ": 4,
    "nested": {"deep": {"value": None}},
}


@pytest.mark.parametrize(
    ("pointer", "value"),
    [
        ("", DOCUMENT),
        ("/items", ["zero", "one"]),
        ("/items/0", "zero"),
        ("/items/1", "one"),
        ("/", "empty key"),
        ("/a~1b", 1),
        ("/c%d", 2),
        ("/m~0n", 3),
        ("/ ", 4),
        ("/nested/deep/value", None),
    ],
)
def test_pointer_resolves_to_the_value_it_names(pointer: str, value: object) -> None:
    assert resolve(DOCUMENT, parse_pointer(pointer)) == value


@pytest.mark.parametrize(
    "pointer",
    ["/absent", "/items/2", "/items/-", "/items/01", "/items/x", "/a~1b/c", "/nested/deep/value/x"],
)
def test_pointer_to_nothing_resolves_to_missing(pointer: str) -> None:
    assert resolve(DOCUMENT, parse_pointer(pointer)) is MISSING


@pytest.mark.parametrize("text", ["items", "#/items", "/a~2", "/trailing~"])
def test_text_that_is_not_a_pointer_is_refused(text: str) -> None:
    with pytest.raises(PointerSyntaxError):
        parse_pointer(text)


def test_tilde_one_is_unescaped_after_tilde_zero() -> None:
    # RFC 6901 §4: "~01" is "~1", not "/".
    assert parse_pointer("/~01") == ("~1",)


@given(st.lists(st.text(max_size=8), max_size=5))
def test_to_pointer_is_the_inverse_of_parse(tokens: list[str]) -> None:
    assert parse_pointer(to_pointer(tokens)) == tuple(tokens)
