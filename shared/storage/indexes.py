"""The indexes every query of the gateway needs, created idempotently (``gateway init-db``).

* ``processed_events``: a TTL on ``completed_at`` limited to ``succeeded``
  documents (the worker's dedupe window, ``GATEWAY_DEDUPE_TTL_S``), and
  ``status + updated_at`` for the admin view of stuck or retrying keys.
* ``active_shipments``: only ``_id`` (``{source}:{shipment.id}``).
* ``dead_letter_events``: unique ``idempotency_key``, and ``status``,
  ``source``, ``error.code`` and ``reason``, each with ``dead_lettered_at``,
  for the dead-letter list's filters in newest-first order.

Running :func:`ensure_indexes` again changes nothing. When an index exists
under our name with other options, only a different TTL is changed in place
(``collMod``); anything else is dropped and rebuilt.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final

from msgspec import Struct
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from shared.storage.mongo import (
    DEAD_LETTER_EVENTS,
    PROCESSED_EVENTS,
    Document,
    translate_errors,
)

__all__ = ["IndexAction", "IndexChange", "IndexSpec", "ensure_indexes", "index_specs"]

_COMMAND_NOT_FOUND: Final = 59


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
    """What :func:`ensure_indexes` did to one index."""

    collection: str
    name: str
    action: IndexAction


def index_specs(dedupe_ttl_s: int) -> list[IndexSpec]:
    """The gateway's indexes, with the succeeded-key TTL set to ``dedupe_ttl_s``."""
    by_time = ("dead_lettered_at", DESCENDING)
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
        IndexSpec(
            collection=DEAD_LETTER_EVENTS,
            name="idempotency_key_unique",
            keys=(("idempotency_key", ASCENDING),),
            unique=True,
        ),
        IndexSpec(
            collection=DEAD_LETTER_EVENTS,
            name="status_dead_lettered_at",
            keys=(("status", ASCENDING), by_time),
        ),
        IndexSpec(
            collection=DEAD_LETTER_EVENTS,
            name="source_dead_lettered_at",
            keys=(("source", ASCENDING), by_time),
        ),
        IndexSpec(
            collection=DEAD_LETTER_EVENTS,
            name="error_code_dead_lettered_at",
            keys=(("error.code", ASCENDING), by_time),
        ),
        IndexSpec(
            collection=DEAD_LETTER_EVENTS,
            name="reason_dead_lettered_at",
            keys=(("reason", ASCENDING), by_time),
        ),
        IndexSpec(
            collection=DEAD_LETTER_EVENTS,
            name="dead_lettered_at",
            keys=(by_time,),
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
        current = existing[spec.collection].get(spec.name)
        action = await _ensure_one(db, spec, current)
        changes.append(IndexChange(spec.collection, spec.name, action))
    return changes


async def _ensure_one(
    db: AsyncDatabase[Document], spec: IndexSpec, current: Mapping[str, Any] | None
) -> IndexAction:
    if current is None:
        await _create(db, spec)
        return IndexAction.CREATED
    same_shape = (
        tuple((field, int(direction)) for field, direction in current["key"]) == spec.keys
        and bool(current.get("unique", False)) == spec.unique
        and _plain(current.get("partialFilterExpression")) == spec.partial_filter
        and ("expireAfterSeconds" in current) == (spec.expire_after_s is not None)
    )
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
        await db[spec.collection].create_index(list(spec.keys), **options)


def _plain(value: Any) -> Any:
    # index_information() returns SON; compare as plain dicts.
    if value is None:
        return None
    return {k: _plain(v) if isinstance(v, dict) else v for k, v in value.items()}
