"""``gateway dev``: the whole stack on this machine, in one command.

Starts Redis (``redis-server`` from PATH unless ``GATEWAY_REDIS_URL`` is set),
MongoDB (``GATEWAY_MONGO_URL``, or the embedded in-memory MongoDB-wire server,
announced as non-durable), creates the indexes, starts the API and N workers
(and optionally the mock downstream), then prints the URLs and a signed curl
line. A worker that dies is restarted, as a supervisor would. Ctrl-C stops
everything it started.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Literal

import click

from scripts.commands.sign import curl_line, sign_body
from scripts.devstack.stack import Stack, StackOptions, redis_topology_option
from scripts.harness.services import ServiceError
from shared.adapters.config import StandardConfig
from shared.settings import load_settings, redact_url

__all__ = ["dev_command", "gateway_invocation", "sample_event"]


def sample_event() -> bytes:
    """A valid ``shipment.created`` event with fresh ids."""
    suffix = uuid.uuid4().hex[:8]
    return json.dumps(
        {
            "event_id": f"evt_{suffix}",
            "event_type": "shipment.created",
            "occurred_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "shipment": {
                "id": f"shp_{suffix}",
                "order_id": f"ord_{suffix}",
                "tracking_number": "1Z999",
            },
        }
    ).encode()


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _: FrameType | None) -> None:
    # A terminal's Ctrl-C can arrive twice (directly and forwarded by `uv run`):
    # the first one stops the stack, later ones must not interrupt that shutdown.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop(signal.Signals(signum).name)


@click.command("dev")
@click.option(
    "--port", type=int, envvar="GATEWAY_PORT", default=8000, show_default=True, help="API port."
)
@click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True)
@click.option(
    "--with-mock-downstream", is_flag=True, help="Start the mock downstream and deliver to it."
)
@click.option(
    "--log-dir", type=click.Path(file_okay=False, path_type=Path), help="Write child logs here."
)
@redis_topology_option
def dev_command(
    port: int,
    workers: int,
    with_mock_downstream: bool,
    log_dir: Path | None,
    redis_topology: Literal["single", "sentinel"],
) -> None:
    """Run the whole gateway locally until Ctrl-C."""
    from shared.settings import settings_from_env

    settings_from_env()  # fail fast, naming the variable, before starting anything
    stack = Stack(
        StackOptions(
            port=port,
            workers=workers,
            redis_url=os.environ.get("GATEWAY_REDIS_URL") or None,
            mongo_url=os.environ.get("GATEWAY_MONGO_URL") or None,
            mongo_db=os.environ.get("GATEWAY_MONGO_DB") or "gateway",
            mock_downstream=with_mock_downstream,
            log_dir=log_dir,
            redis_topology=redis_topology,
            redis_appendonly=redis_topology == "sentinel",
        )
    )
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        click.echo("starting the gateway stack…", err=True)
        stack.start()
        _print_banner(stack)
        while True:
            for child in stack.check_children():
                if child.name.startswith("worker-"):
                    index = stack.workers.index(child)
                    code = child.process.returncode if child.process else "?"
                    click.echo(f"{child.name} exited ({code}); restarting", err=True)
                    stack.restart_worker(index)
                else:
                    raise ServiceError(f"{child.name} exited unexpectedly")  # noqa: TRY301
            time.sleep(0.5)
    except _Stop as stop:
        click.echo(f"\n{stop}: stopping the gateway stack…", err=True)
    except ServiceError as exc:
        click.echo(f"error: {exc}", err=True)
        stack.stop()
        sys.exit(1)
    stack.stop()
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    click.echo("stopped.", err=True)


def gateway_invocation() -> str:
    """How another shell runs this same ``gateway``, as printed.

    ``gateway`` itself when the PATH this command was started with finds this
    installation (not when ``uv run`` put the virtualenv on PATH for us only);
    otherwise the virtualenv's script by its absolute path.
    """
    ours = Path(sys.prefix) / "bin" / "gateway"
    on_path = shutil.which("gateway")
    inside_uv_run = "UV" in os.environ or os.environ.get("VIRTUAL_ENV") == sys.prefix
    if on_path is not None and not inside_uv_run and Path(on_path).resolve() == ours.resolve():
        return "gateway"
    if ours.exists():
        return shlex.quote(str(ours))
    return f"{shlex.quote(sys.executable)} -m scripts.commands.cli"


def _print_banner(stack: Stack) -> None:
    env = {**os.environ}
    if stack.generated_source is not None:
        env["GATEWAY_SOURCES_FILE"] = str(stack.sources_file)
        env.pop("GATEWAY_SOURCES", None)
    settings = load_settings(env)
    source, config = next(iter(settings.sources.items()), ("", StandardConfig(secrets=("",))))
    sample_path = stack.workdir / "sample-event.json"
    body = sample_event()
    sample_path.write_bytes(body)
    lines = [
        "",
        "Courier Event Gateway is running",
        f"  API              {stack.api_url}/v1/events/{{source}}",
        f"  API docs         {stack.api_url}/schema",
        f"  readiness        {stack.api_url}/health/ready",
        f"  API metrics      {stack.api_url}/metrics",
    ]
    lines += [
        f"  worker-{i + 1} metrics http://127.0.0.1:{p}/metrics"
        for i, p in enumerate(stack.worker_metrics_ports)
    ]
    if stack.sentinel is not None:
        primary = stack.sentinel.primary()
        lines.append(
            f"  Redis            Sentinel {stack.sentinel.sentinels_env} "
            f"(primary 127.0.0.1:{primary.port})"
        )
    else:
        lines.append(f"  Redis            {redact_url(stack.redis_url)}")
    if stack.mongo_is_embedded:
        lines.append(f"  MongoDB          {stack.mongo_url}")
        lines.append("  !! MongoDB is the embedded in-memory server: NON-DURABLE, lost on exit.")
        lines.append("  !! Set GATEWAY_MONGO_URL to use a real MongoDB.")
    else:
        lines.append(
            f"  MongoDB          {redact_url(stack.mongo_url)} (database {stack.options.mongo_db})"
        )
    if stack.mock_url:
        lines.append(
            f"  mock downstream  {stack.downstream_url} (what it got: {stack.mock_url}/deliveries)"
        )
    if stack.generated_source is not None:
        lines.append(
            f"  source           '{source}', secret generated for this run in {stack.sources_file}"
        )
    if stack.generated_admin_token is not None:
        lines.append(
            f"  admin API        {stack.api_url}/v1/admin (generated token: see stack.env)"
        )
    gateway = gateway_invocation()
    lines += [
        "",
        "Talk to this stack from another shell (gateway sign / demo / dlq):",
        f"  set -a; . {stack.env_file}; set +a",
        f"  {gateway} demo    # or: {gateway} sign EVENT.json --source {source or 'SOURCE'}",
    ]
    if source:
        headers = sign_body(config, body, now=time.time())
        lines += [
            "",
            "Send a signed event (valid for 5 minutes):",
            "  " + curl_line(f"{stack.api_url}/v1/events/{source}", headers, str(sample_path)),
        ]
    lines += ["", "Press Ctrl-C to stop.", ""]
    click.echo("\n".join(lines))
