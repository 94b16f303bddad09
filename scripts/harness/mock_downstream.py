"""A mock downstream: receives the workers' signed deliveries and records them.

Run it on its own (``gateway mock-downstream --port 9200``) or from tests, the
demo and the load test (:class:`MockDownstreamProcess`,
:class:`MockDownstreamClient`). A plain ASGI app served by uvicorn:

* ``POST`` to any other path — a delivery. The answer is, first match wins:
  the key's fixed status (``always``), 503 for each key's first
  ``fail_first`` deliveries, 400 with probability ``permanent_rate``, 503 with
  probability ``transient_rate``, else 200; after waiting ``latency_ms``.
  Transient answers carry ``Retry-After`` when ``retry_after`` is set. With
  ``--secret`` the Standard Webhooks signature is checked (401 if wrong).
* ``GET /deliveries`` — every delivery received (``webhook-id``, body, times,
  status answered, or ``disconnected`` when the sender went away before the
  answer), with per-key counts of all deliveries and of 2xx answers.
* ``DELETE /deliveries`` — forget deliveries and per-key counters.
* ``POST /control`` — change any rule at runtime (JSON, fields of
  :class:`Control`); answers the rules now in force.
* ``GET /health`` — 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import IO, Any, Self

import click
import httpx
import msgspec
import uvicorn
from msgspec import Struct

from scripts.harness.services import (
    ServiceProcess,
    free_port,
)
from shared.settings import decode_secret
from shared.signing import ID_HEADER, SignatureError, verify_standard

__all__ = [
    "Control",
    "Delivery",
    "MockDownstream",
    "MockDownstreamClient",
    "MockDownstreamProcess",
    "Rules",
    "mock_downstream_command",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CONTROL_PATHS = {"/deliveries", "/control", "/health"}
_SIGNATURE_TOLERANCE_S = 300


class Rules(Struct, kw_only=True):
    """How the mock answers deliveries (all changeable through ``POST /control``)."""

    latency_ms: float = 0.0
    transient_rate: float = 0.0
    permanent_rate: float = 0.0
    retry_after: str | None = None
    fail_first: int = 0
    fail_first_status: int = 503
    always: dict[str, int] = msgspec.field(default_factory=dict)


Control = msgspec.defstruct(
    "Control",
    [
        ("reset", bool, False),
        ("seed", int | None, None),
        # Every rule, optional: a rule left out keeps its value.
        *((field.name, field.type | None, None) for field in msgspec.structs.fields(Rules)),
    ],
    kw_only=True,
    forbid_unknown_fields=True,
    module=__name__,
)
Control.__doc__ = """Body of ``POST /control``: :class:`Rules`' fields, each optional (left out: the
rule keeps its value), and ``reset`` and ``seed``.

``always`` replaces the whole key → status map; ``seed`` reseeds the
random source; ``reset`` first restores every rule to its default.
"""


class Delivery(Struct, kw_only=True):
    """One delivery as received and answered."""

    webhook_id: str | None
    path: str
    body: Any
    received_at: float
    answered_at: float | None = None
    status: int | None = None
    signature_ok: bool | None = None
    disconnected: bool = False


class DeliveryLog(Struct, kw_only=True):
    """Body of ``GET /deliveries``."""

    deliveries: list[Delivery]
    counts: dict[str, int]
    ok: dict[str, int]


class MockDownstream:
    """The ASGI app. ``secret`` (``whsec_…``) turns on signature checking."""

    def __init__(
        self, rules: Rules | None = None, *, seed: int | None = None, secret: str | None = None
    ) -> None:
        self.rules = rules if rules is not None else Rules()
        self.deliveries: list[Delivery] = []
        self._seen: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._keys = (decode_secret(secret),) if secret else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        body = await _read_body(receive)
        if path == "/deliveries" and method == "GET":
            log = DeliveryLog(
                deliveries=self.deliveries,
                counts=dict(Counter(d.webhook_id or "" for d in self.deliveries)),
                ok=dict(
                    Counter(
                        d.webhook_id or ""
                        for d in self.deliveries
                        if d.status is not None and 200 <= d.status < 300
                    )
                ),
            )
            await _answer(send, 200, msgspec.json.encode(log))
        elif path == "/deliveries" and method == "DELETE":
            self.deliveries.clear()
            self._seen.clear()
            await _answer(send, 204, b"")
        elif path == "/control" and method == "POST":
            await self._control(body, send)
        elif path == "/health":
            await _answer(send, 200, b'{"status":"ok"}')
        elif method == "POST" and path not in _CONTROL_PATHS:
            await self._deliver(scope, body, receive, send)
        else:
            await _answer(send, 405, b'{"error":"method not allowed"}')

    async def _control(self, body: bytes, send: Send) -> None:
        try:
            change = msgspec.structs.asdict(msgspec.json.decode(body or b"{}", type=Control))
        except msgspec.DecodeError as exc:
            await _answer(send, 422, msgspec.json.encode({"error": str(exc)}))
            return
        if change["reset"]:
            self.rules = Rules()
        if change["seed"] is not None:
            self._rng = random.Random(change["seed"])
        for field in Rules.__struct_fields__:
            if change[field] is not None:
                setattr(self.rules, field, change[field])
        await _answer(send, 200, msgspec.json.encode(self.rules))

    async def _deliver(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get(ID_HEADER)
        try:
            parsed: Any = msgspec.json.decode(body)
        except msgspec.DecodeError:
            parsed = body.decode("utf-8", "replace")
        delivery = Delivery(
            webhook_id=key, path=scope["path"], body=parsed, received_at=time.time()
        )
        self.deliveries.append(delivery)
        nth = self._seen[key or ""]
        self._seen[key or ""] += 1

        status = self._choose_status(key, nth)
        if self._keys is not None:
            try:
                verify_standard(
                    self._keys,
                    headers,
                    body,
                    now=time.time(),
                    tolerance_s=_SIGNATURE_TOLERANCE_S,
                )
                delivery.signature_ok = True
            except SignatureError:
                delivery.signature_ok = False
                status = 401

        if self.rules.latency_ms > 0 and await _disconnected_within(
            receive, self.rules.latency_ms / 1000
        ):
            delivery.disconnected = True
            return
        extra: list[tuple[bytes, bytes]] = []
        if status in (429, 503) and self.rules.retry_after is not None:
            extra.append((b"retry-after", self.rules.retry_after.encode()))
        await _answer(send, status, b'{"received":true}', extra)
        delivery.status = status
        delivery.answered_at = time.time()

    def _choose_status(self, key: str | None, nth: int) -> int:
        rules = self.rules
        if key is not None and key in rules.always:
            return rules.always[key]
        if nth < rules.fail_first:
            return rules.fail_first_status
        if rules.permanent_rate and self._rng.random() < rules.permanent_rate:
            return 400
        if rules.transient_rate and self._rng.random() < rules.transient_rate:
            return 503
        return 200


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _disconnected_within(receive: Receive, seconds: float) -> bool:
    """Wait ``seconds``; ``True`` as soon as the client goes away instead."""
    waiter = asyncio.ensure_future(receive())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
    finally:
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
    return waiter in done and waiter.result().get("type") == "http.disconnect"


async def _answer(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"application/json"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class MockDownstreamClient:
    """Async client for a running mock's control endpoints."""

    def __init__(self, base_url: str) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=10)

    async def deliveries(self) -> DeliveryLog:
        """Everything received so far."""
        response = await self._http.get("/deliveries")
        response.raise_for_status()
        return msgspec.json.decode(response.content, type=DeliveryLog)

    async def reset(self) -> None:
        """Forget deliveries and restore default rules."""
        (await self._http.delete("/deliveries")).raise_for_status()
        await self.control(reset=True)

    async def control(self, **changes: Any) -> Rules:
        """Change rules (fields of :class:`Control`); returns the rules in force."""
        response = await self._http.post("/control", content=msgspec.json.encode(changes))
        response.raise_for_status()
        return msgspec.json.decode(response.content, type=Rules)

    async def aclose(self) -> None:
        await self._http.aclose()


class MockDownstreamProcess(ServiceProcess):
    """The mock in a child process on a private port (tests, demo, load test)."""

    def __init__(
        self,
        *,
        port: int | None = None,
        secret: str | None = None,
        seed: int | None = None,
        log: IO[bytes] | None = None,
    ) -> None:
        self.port = port or free_port()
        self._secret = secret
        self._seed = seed
        self._log = log

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Where workers deliver (``GATEWAY_DOWNSTREAM_URL``)."""
        return f"{self.base_url}/webhooks"

    def start(self) -> Self:
        args = [sys.executable, "-m", "scripts.harness.mock_downstream", "--port", str(self.port)]
        if self._seed is not None:
            args += ["--seed", str(self._seed)]
        env = dict(os.environ)
        if self._secret is not None:
            # Through the environment, not argv: argv is visible in `ps`.
            env["MOCK_DOWNSTREAM_SECRET"] = self._secret
        return self._launch(
            args,
            self.port,
            20.0,
            stdout=subprocess.DEVNULL,
            stderr=self._log if self._log is not None else subprocess.DEVNULL,
            env=env,
        )


class _AnnouncingServer(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            click.echo(f"ready http://{self.config.host}:{self.config.port}")


async def serve(app: MockDownstream, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, printing ``ready <url>`` once listening."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    await _AnnouncingServer(config).serve()


@click.command("mock-downstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9200, show_default=True, type=int)
@click.option("--latency-ms", default=0.0, show_default=True, type=float)
@click.option("--transient-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1))
@click.option("--permanent-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1))
@click.option("--seed", default=None, type=int, help="Seed of the failure dice.")
@click.option(
    "--secret",
    envvar="MOCK_DOWNSTREAM_SECRET",
    default=None,
    help="whsec_ secret: verify signatures (401 when wrong). Also MOCK_DOWNSTREAM_SECRET.",
)
def mock_downstream_command(
    host: str,
    port: int,
    latency_ms: float,
    transient_rate: float,
    permanent_rate: float,
    seed: int | None,
    secret: str | None,
) -> None:
    """Run a mock downstream that records deliveries (for tests, demos and load tests)."""
    rules = Rules(
        latency_ms=latency_ms, transient_rate=transient_rate, permanent_rate=permanent_rate
    )
    try:
        app = MockDownstream(rules, seed=seed, secret=secret)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--secret") from exc
    asyncio.run(serve(app, host, port))


if __name__ == "__main__":
    mock_downstream_command()
