"""The TCP proxy that cuts the network for the outage tests and ``gateway chaos``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from scripts.harness.tcp_proxy import OutageMode, TcpProxy, TcpProxyProcess


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[TcpProxy]:
    """A started proxy in front of the echo server, stopped after the test."""
    started = await TcpProxy(echo_port).start()
    try:
        yield started
    finally:
        await started.stop()


async def _round_trip(port: int, payload: bytes = b"ping", timeout_s: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1024), timeout_s)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def test_proxy_relays_both_ways(proxy: TcpProxy) -> None:
    assert await _round_trip(proxy.port) == b"ping"


async def test_drop_outage_resets_open_connections_and_closes_new_ones_until_up(
    proxy: TcpProxy,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"a")
    assert await reader.read(1) == b"a"
    proxy.go_down(OutageMode.DROP)
    assert await asyncio.wait_for(reader.read(1), 2) == b""  # the open one is closed
    writer.close()
    assert await _round_trip(proxy.port) == b""  # a new one is closed at once
    proxy.go_up()
    assert await _round_trip(proxy.port) == b"ping"


async def test_blackhole_outage_answers_nothing_then_closes_what_lived_through_it(
    proxy: TcpProxy,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    proxy.go_down(OutageMode.BLACKHOLE)
    writer.write(b"lost?")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(5), 0.3)
    with pytest.raises(TimeoutError):
        await _round_trip(proxy.port, timeout_s=0.3)
    proxy.go_up()
    assert await asyncio.wait_for(reader.read(5), 2) == b""
    writer.close()
    assert await _round_trip(proxy.port) == b"ping"


async def test_proxy_process_switches_on_commands_and_confirms_each(echo_port: int) -> None:
    def round_trip(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"ping")
            try:
                return sock.recv(16)
            except ConnectionResetError:
                return b""

    # The echo server runs on this test's loop: block only in threads.
    with TcpProxyProcess(echo_port) as proxy:
        assert await asyncio.to_thread(round_trip, proxy.port) == b"ping"
        proxy.go_down(OutageMode.DROP)
        assert await asyncio.to_thread(round_trip, proxy.port) == b""
        proxy.go_up()
        assert await asyncio.to_thread(round_trip, proxy.port) == b"ping"
        process = proxy.process
        assert process is not None
    assert process.poll() is not None
