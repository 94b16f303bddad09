"""A TCP relay that can cut the network between the gateway and a server.

Used to make a real network outage between the workers/API and MongoDB: the
worker tests run :class:`TcpProxy` in their own event loop, ``gateway chaos``
runs it as a child process (:class:`TcpProxyProcess`, ``python -m
scripts.harness.tcp_proxy``) so relaying never competes with the load driver for one
interpreter.

Two kinds of outage (:class:`OutageMode`):

* ``drop`` — every open connection is closed and each new one is closed as
  soon as it is accepted, as when the server's host restarts or a firewall
  rejects: clients see resets at once;
* ``blackhole`` — connections stay open but nothing passes either way, and new
  connections are accepted but never answered, as in a network partition:
  clients see only their own timeouts. When the outage ends, every connection
  that lived through it is closed (by then its clients have given up on it).

The child process reads commands on its standard input, one per line, and
answers each once it is in force: ``down drop`` / ``down blackhole`` / ``up``
→ ``ok <state>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import os
import signal
import subprocess
import sys
from typing import IO, Self

from scripts.harness.services import ServiceError, ServiceProcess, spawn, terminate

__all__ = ["OutageMode", "TcpProxy", "TcpProxyProcess"]


class OutageMode(enum.StrEnum):
    """How the relay behaves while it is down (module docstring)."""

    DROP = "drop"
    BLACKHOLE = "blackhole"


class TcpProxy:
    """A TCP relay on 127.0.0.1 to ``target_port`` that can be switched off.

    ``port`` 0 picks a free port (read :attr:`port` after :meth:`start`).
    """

    def __init__(self, target_port: int, *, port: int = 0, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._listen_port = port
        self.down: OutageMode | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stalled: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self._listen_port)
        return self

    def go_down(self, mode: OutageMode = OutageMode.DROP) -> None:
        """Start an outage of the given kind (a second call may change the kind)."""
        self.down = mode
        if mode is OutageMode.DROP:
            self._flowing.set()  # stalled pumps wake up and find their sockets closed
            for writer in list(self._writers):
                writer.close()
        else:
            self._flowing.clear()
            self._stalled.update(self._writers)

    def go_up(self) -> None:
        """End the outage; connections that lived through a blackhole are closed."""
        for writer in list(self._stalled):
            writer.close()
        self._stalled.clear()
        self.down = None
        self._flowing.set()

    async def stop(self) -> None:
        self.go_down(OutageMode.DROP)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down is OutageMode.DROP:
            writer.close()
            return
        if self.down is OutageMode.BLACKHOLE:
            # Accepted, never answered; closed when the outage ends.
            self._stalled.add(writer)
            await self._flowing.wait()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        if (began := self._outage()) is not None:  # while we were connecting upstream
            self.go_down(began)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for end in (writer, up_writer):
            end.close()
            self._writers.discard(end)
            self._stalled.discard(end)
        await asyncio.gather(*pumps, return_exceptions=True)
        self._tasks.difference_update(pumps)

    def _outage(self) -> OutageMode | None:
        return self.down

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                await self._flowing.wait()
                if writer.is_closing():
                    return
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            return


class TcpProxyProcess(ServiceProcess):
    """A :class:`TcpProxy` in a child process, switched through its standard input."""

    def __init__(
        self, target_port: int, *, target_host: str = "127.0.0.1", log: IO[bytes] | None = None
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._log = log
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        args = [sys.executable, "-m", "scripts.harness.tcp_proxy"]
        args += ["--target-host", self.target_host, "--target-port", str(self.target_port)]
        self.process = spawn(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log if self._log is not None else subprocess.DEVNULL,
        )
        line = self._read_line()
        if not line.startswith("ready "):
            self.stop()
            raise ServiceError(f"tcp proxy did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def go_down(self, mode: OutageMode = OutageMode.DROP) -> None:
        """Start an outage; returns once the proxy confirmed it."""
        self._command(f"down {mode.value}")

    def go_up(self) -> None:
        """End the outage; returns once the proxy confirmed it."""
        self._command("up")

    def stop(self) -> None:
        if self.process is None:
            return
        terminate(self.process)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self.process = None

    def _command(self, command: str) -> None:
        if self.process is None or self.process.stdin is None:
            raise ServiceError("tcp proxy is not running")
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()
        answer = self._read_line()
        if not answer.startswith("ok "):
            raise ServiceError(f"tcp proxy refused {command!r}: {answer!r}")

    def _read_line(self) -> str:
        assert self.process is not None
        assert self.process.stdout is not None
        return self.process.stdout.readline().decode().strip()


async def _serve(target_host: str, target_port: int, port: int) -> None:
    proxy = await TcpProxy(target_port, port=port, target_host=target_host).start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    commands: asyncio.Queue[str | None] = asyncio.Queue()
    pending = bytearray()

    def readable() -> None:
        data = os.read(sys.stdin.fileno(), 4096)
        if not data:
            commands.put_nowait(None)
            return
        pending.extend(data)
        while (end := pending.find(b"\n")) >= 0:
            commands.put_nowait(pending[:end].decode().strip())
            del pending[: end + 1]

    loop.add_reader(sys.stdin.fileno(), readable)
    print(f"ready {proxy.port}", flush=True)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            getter = asyncio.ensure_future(commands.get())
            await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            command = getter.result()
            if command is None:  # our parent closed the pipe: it is gone
                break
            print(_apply(proxy, command), flush=True)
    finally:
        loop.remove_reader(sys.stdin.fileno())
        waiter.cancel()
        await proxy.stop()


def _apply(proxy: TcpProxy, command: str) -> str:
    words = command.split()
    if words == ["up"]:
        proxy.go_up()
        return "ok up"
    if len(words) == 2 and words[0] == "down" and words[1] in set(OutageMode):
        proxy.go_down(OutageMode(words[1]))
        return f"ok down {words[1]}"
    return f"error unknown command {command!r}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--port", type=int, default=0, help="listen port (0: a free one)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.target_host, args.target_port, args.port))


if __name__ == "__main__":
    main()
