"""``gateway dlq list|show|replay|discard``: the on-call engineer's dead-letter tool.

The command is part of the contract (docs/contract.md §5).

A thin shell over :class:`shared.dlq.DeadLetterService` (the admin API uses
the same service). Tables and the progress bar are drawn with rich; ``--json``
prints machine-readable output on stdout instead. The progress bar, prompts
and errors go to stderr.

Exit codes:

* 0 — done (including no-ops such as "already replayed");
* 1 — some replays or discards failed, a key was not found, MongoDB or Redis
  was unreachable, or the confirmation was declined;
* 2 — usage error (bad option, bad filter, a replay without ``--yes`` in a
  non-interactive run, a discard without ``--reason``);
* 3 — nothing matched the filters.

See ``docs/runbook.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Final

import click
import structlog
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scripts.commands.dlq_output import (
    EXIT_FAILED,
    EXIT_NOTHING_MATCHED,
    EXIT_OK,
    EXIT_USAGE,
    _default_operator,
    _err,
    _fail,
    _out,
    _print_json,
    _render_detail,
    _render_summary,
    _result_line,
    _time,
)
from shared.dlq import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    DeadLetterError,
    DeadLetterFilter,
    DeadLetterReason,
    DeadLetterService,
    DeadLetterStatus,
    InvalidRequest,
    Pacer,
    ReplayAction,
    ReplayFailure,
    ReplayResult,
    ReplaySummary,
    parse_rate,
    parse_time,
)
from shared.queue import QueueUnavailable, client_for, close_client
from shared.settings import Settings, mongo_write_concern_w
from shared.storage.errors import StorageError
from shared.storage.mongo import open_mongo

__all__ = ["EXIT_FAILED", "EXIT_NOTHING_MATCHED", "EXIT_OK", "EXIT_USAGE", "dlq_command"]

REDIS_TIMEOUT_S: Final = 5.0

# ── clients ─────────────────────────────────────────────────────────────────


@contextlib.asynccontextmanager
async def _open_service(settings: Settings) -> AsyncIterator[DeadLetterService]:
    """The service on the configured MongoDB and Redis; both connect on first use.

    Redis is not pinged up front, so ``list`` and ``show`` work while only
    Redis is down (the usual reason to be here at 3 a.m.).
    """
    mongo = open_mongo(
        settings.mongo_url,
        timeout_s=settings.mongo_timeout_s,
        app_name="gateway-dlq",
        write_concern=mongo_write_concern_w(settings),
    )
    # Through Sentinel when GATEWAY_REDIS_SENTINELS is set.
    redis = client_for(settings, timeout_s=REDIS_TIMEOUT_S)
    try:
        async with DeadLetterService(
            mongo[settings.mongo_db], redis, settings.queue_name
        ) as service:
            yield service
    finally:
        await close_client(redis)
        await mongo.close()


def _run[T](work: Callable[[DeadLetterService], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` with a service, turning service and infrastructure errors into exits."""
    from shared.settings import settings_from_env

    settings = settings_from_env()
    _quiet_logs()

    async def main() -> T:
        async with _open_service(settings) as service:
            return await work(service)

    try:
        return asyncio.run(main())
    except InvalidRequest as exc:
        raise click.UsageError(exc.detail) from exc
    except DeadLetterError as exc:
        _fail(exc.detail)
    except StorageError as exc:
        _fail(f"MongoDB is unavailable or refused the operation: {exc}")
    except QueueUnavailable as exc:
        _fail(f"Redis is unavailable, the replay was not queued: {exc}")


def _quiet_logs() -> None:
    # The dead-letter documents are the audit trail; the service's log lines
    # would only clutter a terminal. Warnings still reach stderr.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


# ── options ─────────────────────────────────────────────────────────────────


def _filter_options(*, with_status: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    options = [
        click.option("--source", help="Courier id."),
        click.option("--code", help="Error code, e.g. order_mismatch, downstream_unavailable."),
        click.option(
            "--reason",
            type=click.Choice([r.value for r in DeadLetterReason]),
            help="Why it was dead-lettered.",
        ),
        click.option(
            "--since",
            help="Dead-lettered at or after: RFC 3339, a date, or an age (90s, 15m, 2h, 3d).",
        ),
        click.option("--until", help="Dead-lettered before (same forms as --since)."),
    ]
    if with_status:
        options.append(
            click.option(
                "--status",
                type=click.Choice([*(s.value for s in DeadLetterStatus), "all"]),
                default=DeadLetterStatus.PENDING.value,
                show_default=True,
                help="Status to list; 'all' for every status.",
            )
        )

    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


def _selection(
    source: str | None,
    code: str | None,
    reason: str | None,
    since: str | None,
    until: str | None,
    status: str | None = None,
) -> DeadLetterFilter:
    now = datetime.now(UTC)
    try:
        return DeadLetterFilter(
            source=source,
            code=code,
            reason=DeadLetterReason(reason) if reason else None,
            status=DeadLetterStatus(status) if status and status != "all" else None,
            since=parse_time(since, now=now, name="--since") if since else None,
            until=parse_time(until, now=now, name="--until") if until else None,
        )
    except InvalidRequest as exc:
        raise click.UsageError(exc.detail) from exc


def _describe(selection: DeadLetterFilter) -> str:
    parts = [
        f"{name}={value}"
        for name, value in (
            ("source", selection.source),
            ("code", selection.code),
            ("reason", selection.reason),
            ("status", selection.status),
            ("since", selection.since and _time(selection.since)),
            ("until", selection.until and _time(selection.until)),
        )
        if value is not None
    ]
    return " ".join(parts) or "(no filter)"


by_option = click.option(
    "--by",
    default=_default_operator,
    show_default="your login name",
    help="Operator recorded with the replay or discard.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")


# ── commands ────────────────────────────────────────────────────────────────


@click.group("dlq")
def dlq_command() -> None:
    """Dead letters: list, show, replay, discard (see docs/runbook.md).

    Exit codes: 0 done, 1 something failed or was not found, 2 usage error,
    3 nothing matched.
    """


@dlq_command.command("list")
@_filter_options(with_status=True)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_PAGE_LIMIT),
    default=DEFAULT_PAGE_LIMIT,
    show_default=True,
    help="Rows per page.",
)
@click.option("--cursor", help="Continue after the page that printed this cursor.")
@json_option
def list_command(
    source: str | None,
    code: str | None,
    reason: str | None,
    since: str | None,
    until: str | None,
    status: str,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List dead letters, newest first (default: the pending ones)."""
    selection = _selection(source, code, reason, since, until, status)
    page = _run(lambda service: service.list(selection, limit=limit, cursor=cursor))
    if as_json:
        _print_json(page)
    else:
        table = Table(
            title=f"dead letters: {_describe(selection)}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        for column in (
            "dead lettered",
            "key",
            "type",
            "reason",
            "code",
            "attempts",
            "status",
            "replays",
        ):
            # Keys and times stay whole so they can be copied; the rest folds.
            table.add_column(column, overflow="fold", no_wrap=column in ("dead lettered", "key"))
        for item in page.items:
            last = item.last_replay
            replays = "-" if last is None else f"{item.replays}: {last.outcome or 'in flight'}"
            table.add_row(
                _time(item.dead_lettered_at),
                item.idempotency_key,
                (item.event_type or "-").removeprefix("shipment."),
                item.reason,
                item.error.code,
                str(item.attempts),
                item.status,
                replays,
            )
        console = _out()
        console.print(table)
        console.print(f"{len(page.items)} shown", end="")
        if page.next_cursor:
            console.print(f"; more with --cursor {page.next_cursor}")
        else:
            console.print()
    if not page.items:
        sys.exit(EXIT_NOTHING_MATCHED)


@dlq_command.command("show")
@click.argument("key")
@json_option
def show_command(key: str, as_json: bool) -> None:
    """Show one dead letter: the event, every attempt, every replay."""
    detail = _run(lambda service: service.show(key))
    if as_json:
        _print_json(detail)
        return
    _render_detail(detail)


@dlq_command.command("replay")
@click.option("--id", "keys", multiple=True, help="Idempotency key to replay (repeatable).")
@_filter_options(with_status=False)
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option("--rate", help="At most this many replays per second: 5, 5/s, 30/m.")
@click.option("--limit", type=click.IntRange(min=1), help="Replay at most this many.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@by_option
@json_option
def replay_command(
    keys: tuple[str, ...],
    source: str | None,
    code: str | None,
    reason: str | None,
    since: str | None,
    until: str | None,
    dry_run: bool,
    rate: str | None,
    limit: int | None,
    yes: bool,
    by: str,
    as_json: bool,
) -> None:
    """Replay pending dead letters, by --id or by filter (newest first).

    Each replay re-enqueues the original event under a fresh job id; a worker
    processes it once (an event that already succeeded is not processed
    again). Asks for confirmation, showing the count, unless --yes.
    """
    filters = (source, code, reason, since, until)
    if keys and any(f is not None for f in filters):
        raise click.UsageError("give either --id or filters, not both")
    try:
        per_s = parse_rate(rate) if rate is not None else None
    except InvalidRequest as exc:
        raise click.BadParameter(exc.detail, param_hint="--rate") from exc
    selection = _selection(*filters)
    if limit is not None:
        keys = keys[:limit]
    if keys:
        count = len(keys)
        what = f"{count} dead letter(s)"
    else:
        count = _run(lambda service: service.count_replayable(selection, limit=limit))
        what = f"{count} pending dead letter(s) matching {_describe(selection)}"
    if count == 0:
        if as_json:
            _print_json({"summary": ReplaySummary(dry_run=dry_run), "results": []})
        else:
            _err().print(
                f"nothing to replay: no pending dead letter matches {_describe(selection)}"
            )
        sys.exit(EXIT_NOTHING_MATCHED)
    if not dry_run and not yes:
        _confirm(f"Replay {what}" + (f" at {per_s:g}/s" if per_s is not None else "") + "?")
    pacer = Pacer(per_s) if per_s is not None else None
    run = _BulkReplay(by=by, count=count, dry_run=dry_run, pacer=pacer, as_json=as_json)
    summary = _run(lambda service: run.replay(service, keys, selection, limit))
    if summary.failed:
        sys.exit(EXIT_FAILED)


def _confirm(question: str) -> None:
    if not sys.stdin.isatty():
        raise click.UsageError(
            "refusing to replay without confirmation in a non-interactive run; add --yes"
        )
    if not click.confirm(question, default=False, err=True):
        _fail("not confirmed; nothing was replayed")


class _BulkReplay:
    """One ``replay`` run: feeds results to the summary, the progress bar and the output."""

    def __init__(
        self, *, by: str, count: int, dry_run: bool, pacer: Pacer | None, as_json: bool
    ) -> None:
        self.by = by
        self.dry_run = dry_run
        self.pacer = pacer
        self.as_json = as_json
        self.summary = ReplaySummary(dry_run=dry_run)
        self.results: list[ReplayResult] = []
        self.progress = Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_err(),
            disable=as_json or dry_run,
        )
        self.task = self.progress.add_task("replay", total=count)
        # While the bar is live, lines go above it on its own console (stderr).
        self.lines = _out() if self.progress.disable else self.progress.console

    async def replay(
        self,
        service: DeadLetterService,
        keys: tuple[str, ...],
        selection: DeadLetterFilter,
        limit: int | None,
    ) -> ReplaySummary:
        with self.progress:
            if keys:
                for key in keys:
                    if self.pacer is not None and not self.dry_run:
                        await self.pacer.wait()
                    try:
                        self.record(await service.replay(key, by=self.by, dry_run=self.dry_run))
                    except InvalidRequest:
                        raise
                    except DeadLetterError as exc:
                        self.record(
                            ReplayFailure(idempotency_key=key, code=exc.code, detail=exc.detail)
                        )
            else:
                async for item in service.replay_matching(
                    selection, by=self.by, limit=limit, dry_run=self.dry_run, pacer=self.pacer
                ):
                    self.record(item)
        if self.as_json:
            _print_json({"summary": self.summary, "results": self.results})
        else:
            _render_summary(self.summary)
        return self.summary

    def record(self, item: ReplayResult | ReplayFailure) -> None:
        self.summary.add(item)
        self.progress.advance(self.task)
        if self.as_json:
            if isinstance(item, ReplayResult):
                self.results.append(item)
            return
        # A queued replay is only counted, unless there is something to say about it.
        quiet = (
            isinstance(item, ReplayResult)
            and item.action is ReplayAction.ENQUEUED
            and item.warning is None
        )
        if self.dry_run or not quiet:
            self.lines.print(_result_line(item), markup=False, highlight=False)


@dlq_command.command("discard")
@click.argument("keys", nargs=-1, required=True)
@click.option("--reason", help="Why these events will never be replayed (required).")
@by_option
@json_option
def discard_command(keys: tuple[str, ...], reason: str | None, by: str, as_json: bool) -> None:
    """Discard pending dead letters for good, recording why and by whom."""
    if reason is None or not reason.strip():
        raise click.UsageError("discard needs --reason: say why the events will never be replayed")

    async def work(service: DeadLetterService) -> int:
        failed = 0
        results: list[Any] = []
        for key in keys:
            try:
                result = await service.discard(key, by=by, reason=reason)
            except InvalidRequest:
                raise
            except DeadLetterError as exc:
                failed += 1
                results.append({"idempotency_key": key, "error": exc.code, "detail": exc.detail})
                if not as_json:
                    _err().print(f"FAILED     {key}  {exc.detail}", markup=False)
                continue
            results.append(result)
            if not as_json:
                state = "already discarded" if result.already_discarded else "discarded"
                _out().print(f"{state:<18} {key}  reason: {result.discard_reason}", markup=False)
        if as_json:
            _print_json(results)
        return failed

    if _run(work):
        sys.exit(EXIT_FAILED)
