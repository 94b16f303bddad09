"""``gateway api``: run one API server process from ``GATEWAY_*`` settings (docs/contract.md §5).

With ``GATEWAY_ADMIN_PORT`` set the process listens twice, in one event loop
over the same clients: ``GATEWAY_PORT`` serves ingest, health and metrics;
``GATEWAY_ADMIN_PORT`` (keep it internal) serves the console and ``/v1/admin``
(docs/contract.md §3.5).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import click
import structlog
import uvicorn
import uvloop
from litestar import Litestar

from gateway_api.app import create_apps
from shared.logging import configure_logging
from shared.settings import Settings, SettingsError, redact_url, settings_from_env

__all__ = ["api_command"]


@click.command("api")
def api_command() -> None:
    """Run one API server (uvicorn, uvloop + httptools) on GATEWAY_HOST:GATEWAY_PORT."""
    settings = settings_from_env()
    configure_logging(settings.log_level, settings.log_format, process="api")
    try:
        apps = create_apps(settings)
    except SettingsError as exc:
        raise click.UsageError(f"invalid settings: {exc}") from exc
    structlog.get_logger("gateway_api").info(
        "api.starting",
        host=settings.host,
        port=settings.port,
        admin_port=settings.admin_port,
        redis_url=redact_url(settings.redis_url),
        queue_name=settings.queue_name,
        sources=sorted(settings.sources),
    )
    servers = [uvicorn.Server(_config(app, settings.host, port, settings)) for app, port in apps]
    if len(servers) == 1:
        servers[0].run()
        return
    asyncio.run(_serve_all(servers), loop_factory=_uvloop_factory())


def _config(app: Litestar, host: str, port: int, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        # Our own logging is configured; uvicorn's access lines would duplicate metrics.
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
    )


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    return uvloop.new_event_loop


async def _serve_all(servers: list[uvicorn.Server]) -> None:
    """Run every listener; when one stops (SIGTERM reaches the last installed), stop all."""
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks)
