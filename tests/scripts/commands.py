"""Run a ``gateway`` command as a subprocess, the way an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Sequence

from pymongo import MongoClient


def run_gateway(
    command: str,
    args: Sequence[str],
    *,
    timeout: float,
    clear_env: tuple[str, ...] = ("GATEWAY_",),
) -> subprocess.CompletedProcess[str]:
    """``gateway <command> <args>`` with a clean environment; its output captured.

    Variables starting with ``clear_env`` are dropped so the developer's own
    settings cannot leak in. With ``GATEWAY_TEST_MONGO_URL`` set the command
    runs against that MongoDB in a fresh database, dropped afterwards.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(clear_env)}
    real_mongo = os.environ.get("GATEWAY_TEST_MONGO_URL")
    database = f"{command.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-m", "scripts.commands.cli", command, *args]
    if real_mongo:
        argv += ["--mongo-url", real_mongo, "--mongo-db", database]
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    finally:
        if real_mongo:
            client: MongoClient[dict[str, object]] = MongoClient(real_mongo)
            with client:
                client.drop_database(database)
