"""Index setup (``gateway init-db``), against the wire server."""

from __future__ import annotations

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from shared.storage.errors import IndexSetupError
from shared.storage.indexes import MAX_TTL_S, IndexAction, ensure_indexes, index_specs
from shared.storage.mongo import DEAD_LETTER_EVENTS, PROCESSED_EVENTS, Document


async def test_index_setup_is_idempotent(mongo_db: AsyncDatabase[Document]) -> None:
    specs = index_specs(dedupe_ttl_s=30 * 86_400)
    first = await ensure_indexes(mongo_db, specs)
    assert {c.action for c in first} == {IndexAction.CREATED}
    before = {
        name: await mongo_db[name].index_information()
        for name in (PROCESSED_EVENTS, DEAD_LETTER_EVENTS)
    }
    second = await ensure_indexes(mongo_db, specs)
    assert {c.action for c in second} == {IndexAction.UNCHANGED}
    after = {
        name: await mongo_db[name].index_information()
        for name in (PROCESSED_EVENTS, DEAD_LETTER_EVENTS)
    }
    assert after == before


async def test_ttl_on_succeeded_keys_follows_the_dedupe_setting(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await ensure_indexes(mongo_db, index_specs(dedupe_ttl_s=100))
    changes = await ensure_indexes(mongo_db, index_specs(dedupe_ttl_s=200))
    assert [c.action for c in changes if c.name == "succeeded_ttl"] in (
        [IndexAction.UPDATED],
        [IndexAction.REBUILT],  # servers without collMod
    )
    ttl = (await mongo_db[PROCESSED_EVENTS].index_information())["succeeded_ttl"]
    assert ttl["expireAfterSeconds"] == 200
    assert dict(ttl["partialFilterExpression"]) == {"status": "succeeded"}
    assert [tuple(k) for k in ttl["key"]] == [("completed_at", 1)]


async def test_dead_letter_idempotency_key_is_unique(mongo_db: AsyncDatabase[Document]) -> None:
    from shared.storage.errors import StoreRejected
    from shared.storage.mongo import translate_errors

    await ensure_indexes(mongo_db, index_specs(dedupe_ttl_s=100))
    await mongo_db[DEAD_LETTER_EVENTS].insert_one({"_id": "a", "idempotency_key": "acme:evt_1"})
    with pytest.raises(StoreRejected), translate_errors("insert"):
        await mongo_db[DEAD_LETTER_EVENTS].insert_one({"_id": "b", "idempotency_key": "acme:evt_1"})


def test_every_dead_letter_listing_index_ends_in_the_sort_keys() -> None:
    # The list sorts on (dead_lettered_at, _id) descending; an index serves that
    # sort after an equality prefix only if it ends in exactly those keys.
    sort = (("dead_lettered_at", -1), ("_id", -1))
    listing = [
        spec
        for spec in index_specs(dedupe_ttl_s=60)
        if spec.collection == DEAD_LETTER_EVENTS and spec.name != "idempotency_key_unique"
    ]
    assert {spec.keys[:-2] for spec in listing} == {
        (),
        (("status", 1),),
        (("source", 1),),
        (("error.code", 1),),
        (("reason", 1),),
        (("status", 1), ("error.code", 1)),
    }
    assert all(spec.keys[-2:] == sort for spec in listing)


async def test_an_old_index_under_our_name_with_other_keys_is_rebuilt(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await mongo_db[DEAD_LETTER_EVENTS].create_index(
        [("status", 1), ("dead_lettered_at", -1)], name="status_dead_lettered_at"
    )
    changes = {c.name: c.action for c in await ensure_indexes(mongo_db, index_specs(60))}
    assert changes["status_dead_lettered_at"] is IndexAction.REBUILT
    info = (await mongo_db[DEAD_LETTER_EVENTS].index_information())["status_dead_lettered_at"]
    assert [(k, int(d)) for k, d in info["key"]] == [
        ("status", 1),
        ("dead_lettered_at", -1),
        ("_id", -1),
    ]


async def test_the_same_index_under_another_name_is_accepted_as_it_is(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await mongo_db[DEAD_LETTER_EVENTS].create_index(
        [("idempotency_key", 1)], name="by_key", unique=True
    )
    changes = await ensure_indexes(mongo_db, index_specs(60))
    (change,) = [c for c in changes if c.name == "idempotency_key_unique"]
    assert (change.action, change.existing_name) == (IndexAction.UNCHANGED, "by_key")
    again = await ensure_indexes(mongo_db, index_specs(60))
    assert {c.action for c in again} == {IndexAction.UNCHANGED}
    assert "idempotency_key_unique" not in await mongo_db[DEAD_LETTER_EVENTS].index_information()


async def test_our_keys_under_another_name_with_other_options_are_refused_with_advice(
    mongo_db: AsyncDatabase[Document],
) -> None:
    await mongo_db[DEAD_LETTER_EVENTS].create_index([("idempotency_key", 1)], name="by_key")
    with pytest.raises(IndexSetupError) as refused:
        await ensure_indexes(mongo_db, index_specs(60))
    message = str(refused.value)
    assert "'by_key'" in message
    assert "'idempotency_key_unique'" in message
    assert "dropIndex('by_key')" in message
    assert "gateway init-db" in message
    # Nothing of the operator's was dropped.
    assert "by_key" in await mongo_db[DEAD_LETTER_EVENTS].index_information()


@pytest.mark.parametrize("ttl_s", [-1, MAX_TTL_S + 1])
def test_a_ttl_outside_mongodbs_range_is_refused(ttl_s: int) -> None:
    with pytest.raises(IndexSetupError, match="GATEWAY_DEDUPE_TTL_S"):
        index_specs(dedupe_ttl_s=ttl_s)


def test_the_largest_ttl_mongodb_accepts_is_accepted() -> None:
    (ttl,) = [s for s in index_specs(dedupe_ttl_s=MAX_TTL_S) if s.expire_after_s is not None]
    assert ttl.expire_after_s == MAX_TTL_S
