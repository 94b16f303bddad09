"""Command-line options the proof commands share (``gateway chaos``, ``loadtest``, ``bench-*``).

Each command names its click parameters after the fields of its options
dataclass, so the command builds that dataclass from its parameters in one call
(``ChaosOptions(**params)``); the options that mean the same in several
commands are declared once here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = [
    "ack_replicas_option",
    "drain_timeout_option",
    "mongo_url_option",
    "output_option",
    "seconds_option",
    "seed_option",
]

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def output_option(default: Path | None, help: str | None = None) -> Decorator:
    """``--output``: the directory the command writes its report to."""
    return click.option(
        "--output",
        type=click.Path(file_okay=False, path_type=Path),
        default=default,
        show_default=default is not None,
        help=help,
    )


def seed_option(help: str) -> Decorator:
    """``--seed``: the seed of everything the run draws at random (default 1)."""
    return click.option("--seed", type=int, default=1, show_default=True, help=help)


def mongo_url_option(help: str, *, envvar: str | None = None) -> Decorator:
    """``--mongo-url``: a MongoDB to use instead of the embedded one (``mongo_url``)."""
    return click.option("--mongo-url", "mongo_url", envvar=envvar, default=None, help=help)


def seconds_option(
    flag: str, *, dest: str, minimum: float, default: float, help: str | None = None
) -> Decorator:
    """A length of time in seconds, at least ``minimum`` (its parameter: ``dest``)."""
    return click.option(
        flag, dest, type=click.FloatRange(minimum), default=default, show_default=True, help=help
    )


def drain_timeout_option(minimum: float) -> Decorator:
    """``--drain-timeout``: how long to wait for the queue to drain (``drain_timeout_s``)."""
    return seconds_option("--drain-timeout", dest="drain_timeout_s", minimum=minimum, default=300.0)


def ack_replicas_option(help: str) -> Decorator:
    """``--ack-replicas N``: replicas that must confirm each enqueue (``ack_replicas``, default 0).

    It means what ``GATEWAY_ACK_REPLICAS`` means (docs/contract.md §4.5); the
    command provides the replicas.
    """
    count = click.IntRange(0)
    return click.option("--ack-replicas", type=count, default=0, show_default=True, help=help)
