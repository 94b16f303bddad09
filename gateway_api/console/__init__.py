"""The on-call console (docs/contract.md §3.5): ``/console``, served by the API process.

:func:`console_router` builds the routes (:mod:`gateway_api.console.pages`),
guarded by a session (:mod:`gateway_api.console.auth`);
:class:`~gateway_api.console.live.StatusRelay` relays the workers' status
changes as Server-Sent Events. Templates (Jinja2) and the static CSS and JS
are the project's own, next to this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from litestar import Router
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig

from gateway_api.console.pages import console_router
from shared.settings import Settings

__all__ = ["STATIC_DIR", "TEMPLATE_DIR", "console_routers", "template_config"]

TEMPLATE_DIR: Final = Path(__file__).parent / "templates"
STATIC_DIR: Final = Path(__file__).parent / "static"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=TEMPLATE_DIR, engine=JinjaTemplateEngine)


def console_routers(settings: Settings) -> list[Router]:
    """The console's pages and its static files."""
    return [
        console_router(settings),
        create_static_files_router(
            path="/console/static", directories=[STATIC_DIR], include_in_schema=False
        ),
    ]
