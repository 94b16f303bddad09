"""What ``gateway dlq`` prints: consoles, JSON, error exits, a dead letter's detail and a
replay's lines and summary."""

from __future__ import annotations

import getpass
import sys
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import click
import msgspec
from rich import box
from rich.console import Console
from rich.table import Table

from shared.dlq import DeadLetterDetail, ReplayAction, ReplayFailure, ReplayResult, ReplaySummary

__all__ = ["EXIT_FAILED", "EXIT_NOTHING_MATCHED", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOTHING_MATCHED: Final = 3

_json = msgspec.json.Encoder()


def _out() -> Console:
    # Built per call: click's test runner swaps sys.stdout per invocation.
    return Console(file=sys.stdout, highlight=False, soft_wrap=False)


def _err() -> Console:
    return Console(file=sys.stderr, highlight=False)


def _default_operator() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _print_json(value: Any) -> None:
    click.echo(_json.encode(value).decode())


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _render_detail(detail: DeadLetterDetail) -> None:
    console = _out()
    console.print(f"[bold]{detail.idempotency_key}[/bold]  status={detail.status}")
    facts = [
        ("source", detail.source),
        ("event id", detail.event_id or "-"),
        ("shipment", detail.shipment_id or "-"),
        ("request id", detail.request_id or "-"),
        ("reason", detail.reason),
        ("error", f"{detail.error.code}: {detail.error.message}"),
        ("dead lettered", _time(detail.dead_lettered_at)),
    ]
    if detail.discard_reason is not None:
        facts.append(
            ("discarded", f"{_time(detail.discarded_at)} by {detail.discarded_by}: "
             f"{detail.discard_reason}")
        )  # fmt: skip
    record = detail.processing
    if record is not None:
        facts.append(("processed_events", f"{record.status}, {record.attempts} failed attempts"))
    width = max(len(name) for name, _ in facts)
    for name, value in facts:
        console.print(f"  {name:<{width}}  {value}", markup=False)
    # The body exactly as the courier sent it (never re-formatted: it is the record).
    console.print("event (as received):")
    event = detail.event if detail.event is not None else f"(not kept: {detail.event_omitted})"
    console.print(event, markup=False, highlight=False, soft_wrap=True)
    attempts = Table(title="attempts", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("#", "at", "code", "transient", "ms", "message"):
        attempts.add_column(column, no_wrap=column != "message")
    for attempt in detail.attempts:
        attempts.add_row(
            str(attempt.attempt),
            _time(attempt.at),
            attempt.code,
            "yes" if attempt.transient else "no",
            str(attempt.duration_ms),
            attempt.message,
        )
    console.print(attempts)
    if not detail.replays:
        console.print("replays: none")
        return
    replays = Table(title="replays", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("at", "by", "job id", "outcome"):
        replays.add_column(column, no_wrap=True)
    for replay in detail.replays:
        replays.add_row(
            _time(replay.at),
            replay.by or "-",
            replay.job_id or "-",
            replay.outcome or "(in flight)",
        )
    console.print(replays)


_LABELS: Final = {
    ReplayAction.ENQUEUED: "enqueued",
    ReplayAction.WOULD_ENQUEUE: "would replay",
    ReplayAction.ALREADY_SUCCEEDED: "already succeeded",
    ReplayAction.ALREADY_REPLAYED: "already replayed",
    ReplayAction.IN_FLIGHT: "in flight",
}


def _result_line(item: ReplayResult | ReplayFailure) -> str:
    if isinstance(item, ReplayFailure):
        return f"{'FAILED':<17} {item.idempotency_key}  {item.code}: {item.detail}"
    extra = []
    if item.action in (ReplayAction.ALREADY_SUCCEEDED, ReplayAction.IN_FLIGHT):
        extra.append(item.detail)
    if item.job_id:
        extra.append(f"job {item.job_id}")
    if item.warning:
        extra.append(f"WARNING {item.warning}")
    return "  ".join([f"{_LABELS[item.action]:<17} {item.idempotency_key}", *extra])


def _render_summary(summary: ReplaySummary) -> None:
    table = Table(title="dry run: nothing was changed" if summary.dry_run else "replay summary",
                  title_justify="left", show_header=False)  # fmt: skip
    table.add_column("outcome")
    table.add_column("count", justify="right")
    rows = [
        ("matched", summary.matched),
        ("would replay", summary.would_enqueue)
        if summary.dry_run
        else ("enqueued", summary.enqueued),
        ("already succeeded (no-op)", summary.already_succeeded),
        ("already replayed (no-op)", summary.already_replayed),
        ("replay already in flight", summary.in_flight),
        ("failed", summary.failed),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    _out().print(table)
