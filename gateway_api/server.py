"""``gateway api``: run one API server process from ``GATEWAY_*`` settings (SPEC §5)."""

from __future__ import annotations

import click
import structlog
import uvicorn

from gateway_api.app import create_app
from shared.logging import configure_logging
from shared.settings import SettingsError, redact_url, settings_from_env

__all__ = ["api_command"]


@click.command("api")
def api_command() -> None:
    """Run one API server (uvicorn, uvloop + httptools) on GATEWAY_HOST:GATEWAY_PORT."""
    settings = settings_from_env()
    configure_logging(settings.log_level, settings.log_format, process="api")
    try:
        app = create_app(settings)
    except SettingsError as exc:
        raise click.UsageError(f"invalid settings: {exc}") from exc
    structlog.get_logger("gateway_api").info(
        "api.starting",
        host=settings.host,
        port=settings.port,
        redis_url=redact_url(settings.redis_url),
        queue_name=settings.queue_name,
        sources=sorted(settings.sources),
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        # Our own logging is configured; uvicorn's access lines would duplicate metrics.
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
    )
