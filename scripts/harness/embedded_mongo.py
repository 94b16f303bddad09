"""Run mongoeco's MongoDB-wire server as a process: ``python -m scripts.harness.embedded_mongo``.

In-memory and non-durable: everything is gone when the process stops. Used by
``gateway dev`` and the test suite, never in production. Prints one line,
``ready mongodb://host:port``, once it accepts connections, then serves until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from mongoeco.engines.memory import MemoryEngine
from mongoeco.wire import AsyncMongoEcoProxyServer


async def serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncMongoEcoProxyServer(engine=MemoryEngine(), host=host, port=port) as server:
        address = server.address
        print(f"ready mongodb://{address.host}:{address.port}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
