"""Courier data is opaque (docs/contract.md §4.4), proved through the real stack.

The API (in process, real Redis), a real arq worker running the gateway's own
job, and the MongoDB-wire server: a verified, valid event whose ``data`` holds
anything JSON can say is answered 202, reaches a terminal state, and its
dead letter reads back through ``gateway dlq show`` and the admin API with the
body byte-exact; a replay runs it again and the body is still the same bytes.

To dead-letter an event on purpose, its shipment is first created under
another order: the hostile event is then an ``order_mismatch`` (permanent).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.asynchronous.database import AsyncDatabase

from gateway_api.app import create_app
from gateway_worker.worker import build_worker_settings
from shared.dlq import DeadLetterService
from shared.settings import Settings
from shared.storage.events import ProcessedEvents
from shared.storage.mongo import Document
from tests.api.harness import asgi_client, running
from tests.factories import our_headers, settings_env
from tests.plugins.worker import FAST

# arq 0.28's Worker.close() calls redis-py's deprecated close(); not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")

TOKEN = "hostile-admin-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
TERMINAL = {"succeeded", "dead_lettered"}
SETTLE_S = 30.0
GATEWAY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "gateway"


@dataclass
class Stack:
    """The API client, the settings, and the store the worker writes to."""

    client: httpx.AsyncClient
    settings: Settings
    db: AsyncDatabase[Document]
    redis: ArqRedis

    def service(self) -> DeadLetterService:
        """The service behind ``gateway dlq`` and the admin API."""
        return DeadLetterService(self.db, self.redis, self.settings.queue_name)

    async def submit(self, body: bytes) -> str:
        """POST ``body`` signed; it must be accepted. Its idempotency key."""
        response = await self.client.post(
            "/v1/events/acme", content=body, headers=our_headers(body)
        )
        assert response.status_code == 202, response.text
        key: str = response.json()["idempotency_key"]
        return key

    async def settled(self, key: str) -> str:
        """Wait for ``key`` to reach a terminal status; that status."""
        events = ProcessedEvents(self.db)
        async with asyncio.timeout(SETTLE_S):
            while True:
                record = await events.get(key)
                if record is not None and record.status in TERMINAL:
                    return record.status.value
                await asyncio.sleep(0.05)

    async def replay_settled(self, key: str, replays: int) -> str:
        """Wait for the ``replays``-th replay of ``key`` to have an outcome; that outcome."""
        async with self.service() as service:
            async with asyncio.timeout(SETTLE_S):
                while True:
                    detail = await service.show(key)
                    if len(detail.replays) == replays and detail.replays[-1].outcome:
                        return detail.replays[-1].outcome
                    await asyncio.sleep(0.05)

    async def admin_dead_letter(self, key: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/admin/dead-letters/{key}", headers=ADMIN)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


@pytest.fixture
async def stack(
    make_settings: Callable[..., Settings], mongo_db: AsyncDatabase[Document], redis: ArqRedis
) -> AsyncIterator[Stack]:
    settings: Settings = make_settings(**{**FAST, "max_attempts": 2, "admin_token": TOKEN})
    worker = Worker(
        **{**build_worker_settings(settings, worker_id="hostile"), "handle_signals": False}
    )
    task = asyncio.create_task(worker.main())
    app = create_app(settings)
    try:
        async with running(app), asgi_client(app) as client:
            yield Stack(client, settings, mongo_db, redis)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await worker.close()


def event_body(event_id: str, shipment_id: str, order_id: str, data: bytes) -> bytes:
    """A valid event whose ``data`` is the JSON text ``data``, exactly."""
    head = json.dumps(
        {
            "event_id": event_id,
            "event_type": "shipment.in_transit",
            "occurred_at": "2026-11-22T10:15:00Z",
            "shipment": {"id": shipment_id, "order_id": order_id},
        }
    ).encode()
    return head[:-1] + b', "data": ' + data + b"}"


async def dead_letter_of(stack: Stack, data: bytes) -> tuple[str, bytes]:
    """Submit an event carrying ``data`` that must dead-letter; its key and body."""
    shipment_id = f"shp_{uuid.uuid4().hex}"
    seed = await stack.submit(event_body(f"seed_{uuid.uuid4().hex}", shipment_id, "ord_A", b"{}"))
    assert await stack.settled(seed) == "succeeded"
    body = event_body(f"evt_{uuid.uuid4().hex}", shipment_id, "ord_B", data)
    key = await stack.submit(body)
    assert await stack.settled(key) == "dead_lettered"
    return key, body


async def assert_round_trip(stack: Stack, key: str, body: bytes) -> None:
    """The dead letter, through the service and the admin API, holds ``body`` byte-exact."""
    async with stack.service() as service:
        detail = await service.show(key)
    assert detail.error.code == "order_mismatch"
    assert detail.event is not None
    assert detail.event.encode() == body
    answer = await stack.admin_dead_letter(key)
    assert answer["event"].encode() == body


def gateway_dlq_show(settings: Settings, key: str) -> dict[str, Any]:
    """``gateway dlq show KEY --json`` as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(settings_env(settings))
    ran = subprocess.run(
        [str(GATEWAY), "dlq", "show", key, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    shown: dict[str, Any] = json.loads(ran.stdout)
    return shown


# The three cases of the issue that once broke the pipeline.
CASES = {
    "int_below_int64": b'{"n": -9223372036854775809}',
    "int_above_int64": b'{"n": 9223372036854775808}',
    "nul_in_a_key": b'{"k\\u0000ey": "v\\u0000alue"}',
    "dbref_shape": b'{"ref": {"$ref": "orders", "$id": {"$oid": "x"}, "$db": "a.b"}}',
}


@pytest.mark.parametrize("data", list(CASES.values()), ids=list(CASES))
async def test_hostile_data_is_accepted_dead_lettered_and_read_back_byte_exact(
    stack: Stack, data: bytes
) -> None:
    key, body = await dead_letter_of(stack, data)
    await assert_round_trip(stack, key, body)
    shown = await asyncio.to_thread(gateway_dlq_show, stack.settings, key)
    assert shown["event"].encode() == body
    assert json.loads(shown["event"])["data"] == json.loads(data)


async def test_a_replay_of_hostile_data_reaches_an_outcome_and_keeps_the_body(
    stack: Stack,
) -> None:
    key, body = await dead_letter_of(stack, CASES["int_above_int64"])
    response = await stack.client.post(f"/v1/admin/dead-letters/{key}/replay", headers=ADMIN)
    assert response.status_code == 202, response.text
    assert await stack.replay_settled(key, 1) == "dead_lettered"
    await assert_round_trip(stack, key, body)


# ── property: any JSON data ──────────────────────────────────────────────────

odd_keys = st.sampled_from(["$ref", "$id", "$db", "$where", "a.b", ".", "$", "", "\x00", "k\x00"])
keys = st.text(max_size=12) | odd_keys
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.sampled_from([2**63, -(2**63) - 1, 2**64, -(2**64)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=10)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(keys, children, max_size=4)
        | st.fixed_dictionaries({"$ref": st.text(max_size=8), "$id": children})
    ),
    max_leaves=16,
)


class DataText:
    """How to write one ``data`` object; its repr stays short however big the text is."""

    def __init__(self, kind: str, value: Any, ensure_ascii: bool = True) -> None:
        self.kind = kind
        self.value = value
        self.ensure_ascii = ensure_ascii

    def __repr__(self) -> str:
        shown = repr(self.value)
        return f"DataText({self.kind!r}, {shown[:200]}{'...' if len(shown) > 200 else ''})"

    def text(self) -> bytes:
        """The JSON text of the object."""
        match self.kind:
            case "deep":
                depth: int = self.value[0]
                opener: str = self.value[1][0]
                closer: str = self.value[1][1]
                return ('{"deep": ' + opener * depth + "1" + closer * depth + "}").encode()
            case "long":
                char, size = self.value
                return json.dumps({"long": char * size}, ensure_ascii=False).encode()
            case "raw_number":
                number: str = self.value
                return ('{"n": ' + number + "}").encode()
        return json.dumps(self.value, ensure_ascii=self.ensure_ascii).encode()


data_texts = st.one_of(
    st.builds(
        DataText,
        st.just("values"),
        st.dictionaries(keys, json_values, max_size=5),
        st.booleans(),
    ),
    # Nesting msgspec follows; real MongoDB would refuse past ~100 levels as a document.
    st.builds(
        DataText,
        st.just("deep"),
        st.tuples(
            st.integers(min_value=100, max_value=5_000),
            st.sampled_from([("[", "]"), ('{"a":', "}")]),
        ),
    ),
    # At most 6 bytes a character once escaped: stays within the 256 KiB body limit.
    st.builds(DataText, st.just("long"), st.tuples(st.characters(), st.integers(1_000, 40_000))),
    # Numbers JSON allows that no float or int64 holds, written as sent.
    st.builds(
        DataText,
        st.just("raw_number"),
        st.sampled_from(["1e999", "-1e999", "1e-999", "123456789" * 8, "-0.0", "1E+400"]),
    ),
)


@settings(
    max_examples=int(os.environ.get("GATEWAY_HOSTILE_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=data_texts)
async def test_any_json_data_reaches_a_terminal_state_and_round_trips_byte_exact(
    stack: Stack, data: DataText
) -> None:
    key, body = await dead_letter_of(stack, data.text())
    await assert_round_trip(stack, key, body)
    response = await stack.client.post(f"/v1/admin/dead-letters/{key}/replay", headers=ADMIN)
    assert response.status_code == 202, response.text
    assert await stack.replay_settled(key, 1) == "dead_lettered"
    assert await stack.settled(key) == "dead_lettered"
    await assert_round_trip(stack, key, body)
