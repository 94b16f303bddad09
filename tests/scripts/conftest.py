"""Names the script tests import from here, kept stable for tests that move.

Every shared fixture is a plugin (``tests/plugins/``) and every factory is in
``tests/factories.py``; new tests import from those. Nothing here is local.
"""

from __future__ import annotations

from tests.factories import T0, make_event, payload, settings_env, write_letter
from tests.plugins.dlq import MakeService, make_service, service
from tests.plugins.servers import snapshot
from tests.plugins.worker import (
    dead_letter_via_worker,
    downstream,
    downstream_url,
    drain,
    http_client,
    make_processor,
    mock_downstream_process,
    run_job,
    worker_pool,
    worker_settings,
)

__all__ = [
    "T0",
    "MakeService",
    "dead_letter_via_worker",
    "downstream",
    "downstream_url",
    "drain",
    "http_client",
    "make_event",
    "make_processor",
    "make_service",
    "mock_downstream_process",
    "payload",
    "run_job",
    "service",
    "settings_env",
    "snapshot",
    "worker_pool",
    "worker_settings",
    "write_letter",
]
