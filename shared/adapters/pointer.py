"""JSON Pointers (RFC 6901): parse once at configuration time, resolve per request.

A pointer is ``""`` (the whole document) or a sequence of ``/``-prefixed
reference tokens in which ``~1`` stands for ``/`` and ``~0`` for ``~``. Array
elements are addressed by a decimal index without leading zeros; ``-`` (the
element after the last) never resolves, since it names nothing that exists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import msgspec

__all__ = ["MISSING", "Pointer", "PointerSyntaxError", "parse_pointer", "resolve", "to_pointer"]

_INDEX: Final = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE: Final = re.compile(r"~(?![01])")


class PointerSyntaxError(ValueError):
    """A string is not a JSON Pointer."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""What :func:`resolve` returns when the pointer names nothing in the document."""

Pointer = tuple[str, ...]
"""A parsed pointer: its unescaped reference tokens."""


def parse_pointer(text: str) -> Pointer:
    """The reference tokens of ``text``; :class:`PointerSyntaxError` if it is not a pointer."""
    if text == "":
        return ()
    if not text.startswith("/"):
        raise PointerSyntaxError(
            f"{text!r} is not a JSON Pointer: it must be empty or start with '/'"
        )
    if _BAD_ESCAPE.search(text):
        raise PointerSyntaxError(f"{text!r} is not a JSON Pointer: '~' must be followed by 0 or 1")
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in text[1:].split("/"))


def to_pointer(tokens: Sequence[str | int]) -> str:
    """The RFC 6901 text of ``tokens`` (the inverse of :func:`parse_pointer`)."""
    return "".join("/" + str(token).replace("~", "~0").replace("/", "~1") for token in tokens)


def resolve(document: object, pointer: Pointer) -> object:
    """The value ``pointer`` names in a decoded JSON ``document``, or :data:`MISSING`.

    The document may also be msgspec Structs decoded from JSON, whose field
    names are the JSON keys and whose absent fields are ``msgspec.UNSET``.
    """
    node = document
    for token in pointer:
        if isinstance(node, msgspec.Struct):
            node = getattr(node, token, MISSING)
            if node is msgspec.UNSET:
                return MISSING
        elif isinstance(node, dict):
            if token not in node:
                return MISSING
            node = node[token]
        elif isinstance(node, list):
            if not _INDEX.fullmatch(token) or int(token) >= len(node):
                return MISSING
            node = node[int(token)]
        else:
            return MISSING
    return node
