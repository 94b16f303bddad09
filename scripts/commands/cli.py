"""The ``gateway`` console command (docs/contract.md §5).

Subcommands live in their own modules and are imported only when invoked, so
``gateway sign`` does not pay for Locust and ``gateway worker`` does not import
Litestar.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["main"]

# name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "api": "gateway_api.server:api_command",
    "worker": "gateway_worker.main:worker_command",
    "worker-health": "gateway_worker.main:health_command",
    "init-db": "gateway_worker.main:init_db_command",
    "mock-downstream": "scripts.harness.mock_downstream:mock_downstream_command",
    "bench-ingest": "scripts.proof.bench.ingest.run:bench_ingest_command",
    "sign": "scripts.commands.sign:sign_command",
    "sources": "scripts.commands.sources:sources_command",
    "dev": "scripts.devstack.dev:dev_command",
    "dlq": "scripts.commands.dlq:dlq_command",
    "demo": "scripts.devstack.demo:demo_command",
    "loadtest": "scripts.proof.loadtest.command:loadtest_command",
    "bench-worker": "scripts.proof.bench.worker:bench_worker_command",
    "chaos": "scripts.proof.chaos.command:chaos_command",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="courier-event-gateway")
def main(**_: Any) -> None:
    """Courier Event Gateway: signed courier webhooks in, processed shipment events out.

    Settings come from GATEWAY_* environment variables (see README.md).
    """


if __name__ == "__main__":
    main()
