"""The on-call console (docs/contract.md §3.5): ``/console``, served by the API process.

:func:`gateway_api.console.pages.console_routers` builds the routes,
guarded by a session (:mod:`gateway_api.console.auth`);
:class:`~gateway_api.console.live.StatusRelay` relays the workers' status
changes as Server-Sent Events. Templates (Jinja2) and the static CSS and JS
are the project's own, next to this file.
"""
