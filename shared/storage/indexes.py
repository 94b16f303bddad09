"""The indexes every query of the gateway needs, created idempotently (``gateway init-db``).

* ``processed_events``: a TTL on ``completed_at`` limited to ``succeeded``
  documents (the worker's dedupe window, ``GATEWAY_DEDUPE_TTL_S``), and
  ``status + updated_at`` for the admin view of stuck or retrying keys.
* ``active_shipments``: only ``_id`` (``{source}:{shipment.id}``).
* ``dead_letter_events``: unique ``idempotency_key``, and ``status``,
  ``source``, ``error.code`` and ``reason``, each followed by
  ``dead_lettered_at`` and ``_id`` (both descending), and
  ``dead_lettered_at, _id`` alone: the dead-letter list sorts on
  ``(dead_lettered_at, _id)``, and only an index ending in both fields serves
  that sort, so a large dead-letter queue is never sorted in memory.

Running :func:`ensure_indexes` again changes nothing. When an index exists
under our name with other options, only a different TTL is changed in place
(``collMod``); anything else is dropped and rebuilt. An index with our keys
under another name is accepted if its options are ours too (reported as
``unchanged``, with ``existing_name``); with other options it is an
:class:`~shared.storage.errors.IndexSetupError` that names it and says what to
do — never dropped behind an operator's back. So is the server refusing an
index (``IndexOptionsConflict`` 85, ``IndexKeySpecsConflict`` 86), and a TTL
outside MongoDB's range (``expireAfterSeconds`` 0..2147483647).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final

from msgspec import Struct
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from shared.storage.errors import IndexSetupError
from shared.storage.mongo import (
    DEAD_LETTER_EVENTS,
    PROCESSED_EVENTS,
    SHIPMENTS,
    Document,
    translate_errors,
)

__all__ = ["IndexAction", "IndexChange", "IndexSpec", "ensure_indexes", "index_specs"]

_COMMAND_NOT_FOUND: Final = 59
_INDEX_CONFLICT_CODES: Final = frozenset({85, 86})  # IndexOptionsConflict, IndexKeySpecsConflict
_SEARCHED_FIELDS: Final = (
    (PROCESSED_EVENTS, "event_id"),
    (SHIPMENTS, "shipment_id"),
    (SHIPMENTS, "tracking_number"),
)
"""What the console's search looks up exactly: event id, shipment id, tracking number."""
_FILTERED_FIELDS: Final = ("status", "source", "error.code", "reason")
"""Dead-letter fields the list filters on alone (``dead_letters.Selection``'s)."""
MAX_TTL_S: Final = 2_147_483_647
"""Largest ``expireAfterSeconds`` MongoDB accepts (a signed 32-bit integer)."""


class IndexAction(enum.StrEnum):
    """What :func:`ensure_indexes` did to one index."""

    CREATED = "created"
    UPDATED = "updated"
    REBUILT = "rebuilt"
    UNCHANGED = "unchanged"


class IndexSpec(Struct, frozen=True, kw_only=True):
    """One index we want: collection, name, keys and options."""

    collection: str
    name: str
    keys: tuple[tuple[str, int], ...]
    unique: bool = False
    expire_after_s: int | None = None
    partial_filter: dict[str, Any] | None = None


class IndexChange(Struct, frozen=True):
    """What :func:`ensure_indexes` did to one index.

    ``existing_name`` is set when an equivalent index already exists under another name.
    """

    collection: str
    name: str
    action: IndexAction
    existing_name: str | None = None


def index_specs(dedupe_ttl_s: int) -> list[IndexSpec]:
    """The gateway's indexes, with the succeeded-key TTL set to ``dedupe_ttl_s``.

    Raises :class:`IndexSetupError` for a TTL MongoDB would refuse.
    """
    if not 0 <= dedupe_ttl_s <= MAX_TTL_S:
        raise IndexSetupError(
            f"the dedupe TTL (GATEWAY_DEDUPE_TTL_S) must be 0..{MAX_TTL_S} seconds, "
            f"MongoDB's range for expireAfterSeconds; not {dedupe_ttl_s}"
        )
    by_time = (("dead_lettered_at", DESCENDING), ("_id", DESCENDING))
    return [
        IndexSpec(
            collection=PROCESSED_EVENTS,
            name="succeeded_ttl",
            keys=(("completed_at", ASCENDING),),
            expire_after_s=dedupe_ttl_s,
            partial_filter={"status": "succeeded"},
        ),
        IndexSpec(
            collection=PROCESSED_EVENTS,
            name="status_updated_at",
            keys=(("status", ASCENDING), ("updated_at", DESCENDING)),
        ),
        # The console's search (docs/contract.md §3.5): each field under its own name.
        *(
            IndexSpec(collection=collection, name=field, keys=((field, ASCENDING),))
            for collection, field in _SEARCHED_FIELDS
        ),
        # The console's overview groups pending dead letters by code (covered by the
        # prefix) and its list is mostly "pending with this code".
        IndexSpec(
            collection=DEAD_LETTER_EVENTS,
            name="status_error_code_dead_lettered_at",
            keys=(("status", ASCENDING), ("error.code", ASCENDING), *by_time),
        ),
        IndexSpec(
            collection=DEAD_LETTER_EVENTS,
            name="idempotency_key_unique",
            keys=(("idempotency_key", ASCENDING),),
            unique=True,
        ),
        # One per filter field of the dead-letter list, each ending in the list's sort.
        *(
            IndexSpec(
                collection=DEAD_LETTER_EVENTS,
                name=f"{field.replace('.', '_')}_dead_lettered_at",
                keys=((field, ASCENDING), *by_time),
            )
            for field in _FILTERED_FIELDS
        ),
        IndexSpec(
            collection=DEAD_LETTER_EVENTS,
            name="dead_lettered_at",
            keys=by_time,
        ),
    ]


async def ensure_indexes(
    db: AsyncDatabase[Document], specs: Sequence[IndexSpec]
) -> list[IndexChange]:
    """Create or correct each index in ``specs``; report what was done to each."""
    changes: list[IndexChange] = []
    existing: dict[str, Mapping[str, Any]] = {}
    for spec in specs:
        if spec.collection not in existing:
            with translate_errors("index_information"):
                existing[spec.collection] = await db[spec.collection].index_information()
        indexes = existing[spec.collection]
        current = indexes.get(spec.name)
        if current is None and (other := _same_keys_elsewhere(spec, indexes)) is not None:
            name, info = other
            if not _same_shape(spec, info) or info.get("expireAfterSeconds") != spec.expire_after_s:
                raise IndexSetupError(
                    f"{spec.collection}: index {name!r} has the keys of the gateway's index "
                    f"{spec.name!r} but other options ({_options(info)}); MongoDB allows one "
                    f"index per key pattern. Drop it (db.{spec.collection}.dropIndex({name!r})) "
                    "if nothing else relies on it, then run `gateway init-db` again"
                )
            changes.append(IndexChange(spec.collection, spec.name, IndexAction.UNCHANGED, name))
            continue
        action = await _ensure_one(db, spec, current)
        changes.append(IndexChange(spec.collection, spec.name, action))
    return changes


def _keys(info: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    return tuple((field, int(direction)) for field, direction in info["key"])


def _same_keys_elsewhere(
    spec: IndexSpec, indexes: Mapping[str, Mapping[str, Any]]
) -> tuple[str, Mapping[str, Any]] | None:
    for name, info in indexes.items():
        if name != spec.name and _keys(info) == spec.keys:
            return name, info
    return None


def _same_shape(spec: IndexSpec, info: Mapping[str, Any]) -> bool:
    """Same keys and options, except possibly the TTL's value."""
    return (
        _keys(info) == spec.keys
        and bool(info.get("unique", False)) == spec.unique
        and _plain(info.get("partialFilterExpression")) == spec.partial_filter
        and ("expireAfterSeconds" in info) == (spec.expire_after_s is not None)
    )


def _options(info: Mapping[str, Any]) -> str:
    shown = {
        k: _plain(v) if isinstance(v, dict) else v
        for k, v in info.items()
        if k not in ("v", "key", "ns")
    }
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "none"


async def _ensure_one(
    db: AsyncDatabase[Document], spec: IndexSpec, current: Mapping[str, Any] | None
) -> IndexAction:
    if current is None:
        await _create(db, spec)
        return IndexAction.CREATED
    same_shape = _same_shape(spec, current)
    if same_shape and current.get("expireAfterSeconds") == spec.expire_after_s:
        return IndexAction.UNCHANGED
    if same_shape and spec.expire_after_s is not None and await _change_ttl(db, spec):
        return IndexAction.UPDATED
    with translate_errors("drop_index"):
        await db[spec.collection].drop_index(spec.name)
    await _create(db, spec)
    return IndexAction.REBUILT


async def _change_ttl(db: AsyncDatabase[Document], spec: IndexSpec) -> bool:
    """``collMod`` the TTL in place; ``False`` if the server has no ``collMod``."""
    command = {
        "collMod": spec.collection,
        "index": {"name": spec.name, "expireAfterSeconds": spec.expire_after_s},
    }
    with translate_errors("collMod"):
        try:
            await db.command(command)
        except OperationFailure as exc:
            # Only a server without collMod (some wire-compatible servers) falls
            # back to drop + create; any other refusal is raised.
            if exc.code == _COMMAND_NOT_FOUND or "unsupported wire command" in str(exc):
                return False
            raise
    return True


async def _create(db: AsyncDatabase[Document], spec: IndexSpec) -> None:
    options: dict[str, Any] = {"name": spec.name}
    if spec.unique:
        options["unique"] = True
    if spec.expire_after_s is not None:
        options["expireAfterSeconds"] = spec.expire_after_s
    if spec.partial_filter is not None:
        options["partialFilterExpression"] = spec.partial_filter
    with translate_errors("create_index"):
        try:
            await db[spec.collection].create_index(list(spec.keys), **options)
        except OperationFailure as exc:
            if exc.code in _INDEX_CONFLICT_CODES:
                code_name = (exc.details or {}).get("codeName", exc.code)
                raise IndexSetupError(
                    f"{spec.collection}: MongoDB refused index {spec.name!r} "
                    f"({code_name}: {exc}); an index with the same keys or "
                    "name exists with other options. List them with "
                    f"db.{spec.collection}.getIndexes(), drop the conflicting one, then run "
                    "`gateway init-db` again"
                ) from exc
            raise


def _plain(value: Any) -> Any:
    # index_information() returns SON; compare as plain dicts.
    if value is None:
        return None
    return {k: _plain(v) if isinstance(v, dict) else v for k, v in value.items()}
