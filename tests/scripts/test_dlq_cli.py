"""``gateway dlq``: every command run as a real process against real Redis and MongoDB.

Replays are processed by real ``gateway worker`` processes delivering to the
mock downstream, so "one effect" is counted where it happens.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from pymongo.asynchronous.database import AsyncDatabase

from shared.settings import Settings
from shared.storage.mongo import DEAD_LETTER_EVENTS, Document
from tests.factories import (
    make_event,
    settings_env,
    write_filter_letters,
    write_letter,
    write_letters,
    write_permanent_letter,
)
from tests.plugins.dlq import assert_discarded
from tests.plugins.servers import unchanged
from tests.plugins.worker import Workers, stored_letter, wait_until

GATEWAY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "gateway"


class Ran:
    """One finished ``gateway dlq`` process."""

    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code = code
        self.stdout = stdout
        self.stderr = stderr

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(settings_env(settings), COLUMNS="220")
    return env


async def dlq(settings: Settings, *args: str) -> Ran:
    """Run ``gateway dlq ARGS`` (stdin not a terminal) and wait for it."""
    process = await asyncio.create_subprocess_exec(
        str(GATEWAY),
        "dlq",
        *args,
        env=cli_env(settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(), stderr.decode())


async def replay_by_id(settings: Settings, key: str, *args: str) -> Ran:
    """Run ``gateway dlq replay --id KEY --yes ARGS``; it must exit 0."""
    ran = await dlq(settings, "replay", "--id", key, "--yes", *args)
    assert ran.code == 0, ran
    return ran


def in_terminal(settings: Settings, args: list[str], answer: bytes) -> Ran:
    """Run ``gateway dlq ARGS`` with stdin and stderr on a pseudo-terminal; answer its prompt."""
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [str(GATEWAY), "dlq", *args],
        stdin=secondary,
        stderr=secondary,
        stdout=subprocess.PIPE,
        env=cli_env(settings),
    )
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while b"[y/N]" not in seen:
            assert time.monotonic() < deadline, f"no prompt; terminal showed {seen!r}"
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                seen += os.read(main, 4096)
        os.write(main, answer + b"\n")
        stdout, _ = process.communicate(timeout=60)
        while select.select([main], [], [], 0.2)[0]:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main)
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    return Ran(process.returncode, stdout.decode(), seen.decode(errors="replace"))


async def letter_statuses(db: AsyncDatabase[Document]) -> dict[str, str]:
    return {d["_id"]: d["status"] async for d in db[DEAD_LETTER_EVENTS].find({}, {"status": 1})}


@pytest.fixture
def pool_settings(pool_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """The plugin's pool settings, giving up after two attempts."""
    return functools.partial(pool_settings, max_attempts=2)


async def fixed_outage(workers: Workers, count: int) -> tuple[Settings, list[str]]:
    """Start two workers, dead-letter ``count`` events by a downstream answering 503, then fix
    the downstream; the workers' settings and the keys."""
    settings, _ = await workers.start(2)
    events = [make_event(f"evt_{i}", shipment_id=f"shp_{i}") for i in range(count)]
    keys = [q.idempotency_key for q in events]
    await workers.downstream.control(always=dict.fromkeys(keys, 503))
    await workers.submit(*events, until="dead_lettered")
    await workers.downstream.control(always={})  # the cause is fixed
    return settings, keys


async def wait_all_replayed(db: AsyncDatabase[Document], keys: list[str]) -> None:
    async def replayed() -> bool:
        return await letter_statuses(db) == dict.fromkeys(keys, "replayed")

    await wait_until(replayed)


# ── list ────────────────────────────────────────────────────────────────────


async def test_list_filters_select_exactly_the_matching_entries(
    settings: Settings, mongo_db: AsyncDatabase[Document]
) -> None:
    a, b, c = await write_filter_letters(mongo_db)
    await mongo_db[DEAD_LETTER_EVENTS].update_one({"_id": c}, {"$set": {"status": "replayed"}})

    async def keys(*args: str) -> list[str]:
        ran = await dlq(settings, "list", "--json", *args)
        assert ran.code in (0, 3), ran
        return [item["idempotency_key"] for item in ran.json()["items"]]

    assert await keys() == [b, a]  # pending by default, newest first
    assert await keys("--status", "all") == [c, b, a]
    assert await keys("--status", "replayed") == [c]
    assert await keys("--source", "legacy", "--status", "all") == [c]
    assert await keys("--code", "order_mismatch") == [b]
    assert await keys("--reason", "retries_exhausted", "--status", "all") == [c, a]
    assert await keys("--since", "2026-11-22T10:05:00Z", "--status", "all") == [c, b]
    assert await keys("--until", "2026-11-22T10:10:00Z") == [a]
    assert await keys("--source", "acme", "--code", "downstream_unavailable") == [a]


async def test_list_prints_a_table_and_the_cursor_of_the_next_page(
    settings: Settings, mongo_db: AsyncDatabase[Document]
) -> None:
    await write_letters(mongo_db, 3)
    first = await dlq(settings, "list", "--limit", "2")
    assert first.code == 0, first
    assert "acme:evt_2" in first.stdout
    assert "acme:evt_1" in first.stdout
    assert "acme:evt_0" not in first.stdout
    assert "downstream_unavailable" in first.stdout
    assert "2026-11-22T10:00:02Z" in first.stdout
    cursor = first.stdout.rsplit("--cursor ", 1)[1].split()[0]
    second = await dlq(settings, "list", "--limit", "2", "--cursor", cursor, "--json")
    assert second.code == 0, second
    page = second.json()
    assert ([i["idempotency_key"] for i in page["items"]], page["next_cursor"]) == (
        ["acme:evt_0"],
        None,
    )


async def test_list_exits_3_when_nothing_matches_and_2_on_a_bad_filter(
    settings: Settings, mongo_db: AsyncDatabase[Document]
) -> None:
    await write_letter(mongo_db, "evt_1")
    nothing = await dlq(settings, "list", "--source", "nobody")
    assert nothing.code == 3, nothing
    assert "0 shown" in nothing.stdout
    bad_time = await dlq(settings, "list", "--since", "last tuesday")
    assert bad_time.code == 2, bad_time
    assert "--since: 'last tuesday' is not an RFC 3339 time" in bad_time.stderr
    bad_cursor = await dlq(settings, "list", "--cursor", "garbage")
    assert bad_cursor.code == 2, bad_cursor
    assert "cursor" in bad_cursor.stderr
    bad_reason = await dlq(settings, "list", "--reason", "boredom")
    assert bad_reason.code == 2, bad_reason


async def test_an_unreachable_mongodb_is_reported_with_exit_1(settings: Settings) -> None:
    from scripts.harness.services import free_port

    unreachable = Settings(
        **{
            **{f: getattr(settings, f) for f in Settings.__struct_fields__},
            "mongo_url": f"mongodb://127.0.0.1:{free_port()}",
            "mongo_timeout_s": 0.3,
        }
    )
    ran = await dlq(unreachable, "list")
    assert ran.code == 1, ran
    assert "MongoDB is unavailable" in ran.stderr


# ── show ────────────────────────────────────────────────────────────────────


@pytest.mark.usefixtures("redis")  # the replay needs Redis up, whatever ran before
async def test_show_prints_the_event_every_attempt_and_every_replay(
    settings: Settings, mongo_db: AsyncDatabase[Document]
) -> None:
    key = await write_letter(mongo_db, "evt_1", code="order_mismatch")
    await replay_by_id(settings, key, "--by", "alice")

    shown = await dlq(settings, "show", key)
    assert shown.code == 0, shown
    for text in (
        key,
        "status=pending",
        "order_mismatch: order_mismatch happened",
        '"event_type":"shipment.picked_up"',
        '"order_id":"ord_1"',
        "attempts",
        f"replay/1/{key}",
        "alice",
        "(in flight)",
    ):
        assert text in shown.stdout, (text, shown)

    as_json = await dlq(settings, "show", key, "--json")
    detail = as_json.json()
    assert [a["code"] for a in detail["attempts"]] == ["order_mismatch"]
    assert [(r["by"], r["job_id"], r["outcome"]) for r in detail["replays"]] == [
        ("alice", f"replay/1/{key}", None)
    ]
    assert json.loads(detail["event"])["shipment"]["id"] == "shp_1"


async def test_show_of_an_unknown_key_exits_1(settings: Settings) -> None:
    ran = await dlq(settings, "show", "acme:nope")
    assert ran.code == 1, ran
    assert "no dead letter with idempotency key 'acme:nope'" in ran.stderr


# ── replay ──────────────────────────────────────────────────────────────────


async def test_replay_dry_run_lists_what_would_be_replayed_and_changes_nothing(
    settings: Settings, mongo_db: AsyncDatabase[Document], redis: ArqRedis
) -> None:
    keys = await write_letters(mongo_db, 3)
    await write_letter(mongo_db, "evt_l", source="legacy")
    async with unchanged(mongo_db, redis):
        ran = await dlq(settings, "replay", "--source", "acme", "--dry-run")
        json_ran = await dlq(settings, "replay", "--source", "acme", "--dry-run", "--json")

    assert ran.code == 0, ran
    for key in keys:
        assert f"would replay      {key}\n" in ran.stdout
    assert "legacy:evt_l" not in ran.stdout
    assert "dry run: nothing was changed" in ran.stdout
    report = json_ran.json()
    assert report["summary"]["would_enqueue"] == 3
    assert [r["idempotency_key"] for r in report["results"]] == keys[::-1]


async def test_replay_warns_about_entries_dead_lettered_for_a_permanent_error(
    settings: Settings, mongo_db: AsyncDatabase[Document]
) -> None:
    key = await write_permanent_letter(mongo_db, "evt_p")
    ran = await replay_by_id(settings, key)
    assert (
        f"enqueued          {key}  job replay/1/{key}  WARNING dead-lettered for a permanent "
        "error (order_mismatch)" in ran.stderr + ran.stdout
    ), ran


async def test_replay_without_yes_in_a_non_interactive_run_is_refused_and_changes_nothing(
    settings: Settings, mongo_db: AsyncDatabase[Document], redis: ArqRedis
) -> None:
    key = await write_letter(mongo_db, "evt_1")
    async with unchanged(mongo_db, redis):
        for args in (["--id", key], ["--source", "acme"]):
            ran = await dlq(settings, "replay", *args)
            assert ran.code == 2, ran
            assert "add --yes" in ran.stderr


async def test_replay_in_a_terminal_asks_showing_the_count_and_filter(
    settings: Settings, mongo_db: AsyncDatabase[Document], redis: ArqRedis
) -> None:
    for i in range(2):
        await write_letter(mongo_db, f"evt_{i}")
    await write_letter(mongo_db, "evt_x", code="order_mismatch")
    args = ["replay", "--code", "downstream_unavailable", "--rate", "20/s"]

    async with unchanged(mongo_db, redis):
        declined = await asyncio.to_thread(in_terminal, settings, args, b"n")
        assert declined.code == 1, declined
        assert (
            "Replay 2 pending dead letter(s) matching code=downstream_unavailable at 20/s? [y/N]"
            in declined.stderr
        )

    accepted = await asyncio.to_thread(in_terminal, settings, args, b"y")
    assert accepted.code == 0, accepted
    assert "replay summary" in accepted.stdout
    assert await redis.zcard(settings.queue_name) == 2


async def test_replay_after_the_cause_is_fixed_ends_succeeded_with_one_effect(
    workers: Workers,
) -> None:
    settings, keys = await fixed_outage(workers, 3)

    ran = await dlq(settings, "replay", "--source", "acme", "--rate", "50/s", "--yes")
    assert ran.code == 0, ran
    assert re.search(r"enqueued +│ +3", ran.stdout), ran
    await wait_all_replayed(workers.db, keys)

    listed = await dlq(settings, "list", "--status", "replayed", "--json")
    assert sorted(i["idempotency_key"] for i in listed.json()["items"]) == sorted(keys)
    assert all(i["last_replay"]["outcome"] == "succeeded" for i in listed.json()["items"])
    assert (await workers.downstream.deliveries()).ok == dict.fromkeys(keys, 1)


async def test_replaying_the_same_entries_twice_concurrently_from_two_processes_has_one_effect(
    workers: Workers,
) -> None:
    settings, keys = await fixed_outage(workers, 4)
    # No worker runs while the two replay: neither can find the entries already
    # replayed, so both really contend for every entry.
    workers.pool.stop_all()

    first, second = await asyncio.gather(
        dlq(settings, "replay", "--yes", "--json", "--by", "alice", "--rate", "40/s"),
        dlq(settings, "replay", "--yes", "--json", "--by", "bob", "--rate", "40/s"),
    )
    assert (first.code, second.code) == (0, 0), (first, second)
    summaries = [first.json()["summary"], second.json()["summary"]]
    assert [s["matched"] for s in summaries] == [4, 4]
    assert sum(s["enqueued"] for s in summaries) == 4
    assert sum(s["in_flight"] for s in summaries) == 4
    await workers.pool.start(settings, 2)
    await wait_all_replayed(workers.db, keys)

    again = await dlq(settings, "replay", "--id", keys[0], "--id", keys[1], "--yes", "--json")
    assert again.code == 0, again
    assert {r["action"] for r in again.json()["results"]} == {"already_replayed"}
    nothing_left = await dlq(settings, "replay", "--yes")
    assert nothing_left.code == 3, nothing_left
    assert (await workers.downstream.deliveries()).ok == dict.fromkeys(keys, 1)
    for key in keys:
        letter = await stored_letter(workers.db, key)
        assert [r.outcome for r in letter.replays] == ["succeeded"]


async def test_replay_by_id_reports_each_unknown_key_and_exits_1(
    settings: Settings, mongo_db: AsyncDatabase[Document]
) -> None:
    key = await write_letter(mongo_db, "evt_1")
    ran = await dlq(settings, "replay", "--id", key, "--id", "acme:nope", "--yes")
    assert ran.code == 1, ran
    assert "FAILED" in ran.stderr + ran.stdout
    assert "no dead letter with idempotency key 'acme:nope'" in ran.stderr + ran.stdout
    letter = await stored_letter(mongo_db, key)
    assert [r.job_id for r in letter.replays] == [f"replay/1/{key}"]


async def test_replay_usage_errors_exit_2_and_nothing_matched_exits_3(
    settings: Settings, mongo_db: AsyncDatabase[Document], redis: ArqRedis
) -> None:
    key = await write_letter(mongo_db, "evt_1")
    both = await dlq(settings, "replay", "--id", key, "--source", "acme", "--yes")
    assert both.code == 2, both
    assert "either --id or filters" in both.stderr
    bad_rate = await dlq(settings, "replay", "--rate", "fast", "--yes")
    assert bad_rate.code == 2, bad_rate
    assert "not a positive rate" in bad_rate.stderr
    nothing = await dlq(settings, "replay", "--source", "nobody", "--yes")
    assert nothing.code == 3, nothing
    assert "nothing to replay" in nothing.stderr
    assert await redis.zcard(settings.queue_name) == 0


async def test_replay_limit_bounds_how_many_are_replayed(
    settings: Settings, mongo_db: AsyncDatabase[Document], redis: ArqRedis
) -> None:
    await write_letters(mongo_db, 4)
    ran = await dlq(settings, "replay", "--limit", "3", "--yes", "--json")
    assert ran.code == 0, ran
    assert [r["idempotency_key"] for r in ran.json()["results"]] == [
        "acme:evt_3",
        "acme:evt_2",
        "acme:evt_1",
    ]
    assert await redis.zcard(settings.queue_name) == 3


# ── discard ─────────────────────────────────────────────────────────────────


async def test_discard_without_a_reason_is_refused_and_changes_nothing(
    settings: Settings, mongo_db: AsyncDatabase[Document], redis: ArqRedis
) -> None:
    key = await write_letter(mongo_db, "evt_1")
    async with unchanged(mongo_db, redis):
        for args in ([key], [key, "--reason", "  "]):
            ran = await dlq(settings, "discard", *args)
            assert ran.code == 2, ran
            assert "discard needs --reason" in ran.stderr


async def test_discard_records_the_reason_and_the_operator(
    settings: Settings, mongo_db: AsyncDatabase[Document]
) -> None:
    key = await write_letter(mongo_db, "evt_1", code="order_mismatch")
    ran = await dlq(
        settings,
        "discard",
        key,
        "--reason",
        "courier re-sent it with the right order",
        "--by",
        "al",
    )
    assert ran.code == 0, ran
    assert f"discarded          {key}  reason: courier re-sent it" in ran.stdout
    await assert_discarded(mongo_db, key, "courier re-sent it with the right order", "al")
    replay = await dlq(settings, "replay", "--id", key, "--yes")
    assert replay.code == 1, replay
    assert "discarded" in replay.stderr + replay.stdout
    missing = await dlq(settings, "discard", "acme:nope", "--reason", "x", "--json")
    assert missing.code == 1, missing
    assert missing.json() == [
        {
            "idempotency_key": "acme:nope",
            "error": "dead_letter_not_found",
            "detail": "no dead letter with idempotency key 'acme:nope'",
        }
    ]


async def test_the_operator_defaults_to_the_login_name(
    settings: Settings, mongo_db: AsyncDatabase[Document]
) -> None:
    import getpass

    key = await write_letter(mongo_db, "evt_1")
    await replay_by_id(settings, key)
    assert (await stored_letter(mongo_db, key)).replays[0].by == getpass.getuser()
