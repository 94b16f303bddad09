"""Structured logging: one JSON object per line on stdout.

Call :func:`configure_logging` once per process, first thing. Our own code logs
constant event names with key-value fields through ``structlog.get_logger()``;
context such as ``request_id`` and ``job_id`` is bound with
``structlog.contextvars`` so every line inside a request or job carries it.
Standard-library loggers (uvicorn, arq, httpx) are routed through the same
renderer and writer, so the whole process speaks one format, in order.

Lines logged inside a running event loop are written once per loop turn: the
API logs a line per accepted event, and one ``write`` for all the requests a
loop turn served costs far less than a ``write`` and ``flush`` each. Lines
logged outside a loop (startup, other threads) are written at once, and
whatever is pending is flushed at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from typing import BinaryIO, Literal

import msgspec
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["LineWriter", "configure_logging"]

_json_encoder = msgspec.json.Encoder(enc_hook=repr)


def _render_json(_: WrappedLogger, __: str, event_dict: EventDict) -> bytes:
    # structlog's JSONRenderer around the same encoder costs two more calls per line.
    return _json_encoder.encode(event_dict)


def _drop_color_message(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # uvicorn duplicates its message with ANSI codes under this key.
    event_dict.pop("color_message", None)
    return event_dict


_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error", "failure": "error", "err": "error"}


class _Stamp:
    """Adds ``process`` (if given), ``level`` and ``timestamp`` in one step.

    ``timestamp`` is ISO 8601 UTC with microseconds (``2026-11-22T10:15:00.123456Z``);
    the date and time of day are formatted once per second. This replaces three
    structlog processors (``add_log_level``, ``TimeStamper`` — which builds a
    ``datetime`` per line — and a process adder) on the API's per-event path.
    """

    __slots__ = ("_prefix", "_process", "_second")

    def __init__(self, process: str | None) -> None:
        self._process = process
        self._second = -1
        self._prefix = ""

    def __call__(self, _: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if self._process is not None:
            event_dict.setdefault("process", self._process)
        event_dict["level"] = _LEVEL_OF_METHOD.get(method_name, method_name)
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event_dict


class LineWriter:
    """Writes rendered lines to a binary stream, batching those of one loop turn."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._lock = threading.Lock()

    def write(self, line: bytes | str) -> None:
        """Write one line (without its newline)."""
        data = line.encode() if isinstance(line, str) else line
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            with self._lock:
                self._write([*self._pending, data])
                self._pending.clear()
            return
        self._pending.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write everything pending now."""
        with self._lock:
            self._flush_scheduled = False
            if self._pending:
                lines, self._pending = self._pending, []
                self._write(lines)

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        try:
            self._stream.write(b"\n".join(lines) + b"\n")
            self._stream.flush()
        except (OSError, ValueError):
            # stdout closed or broken (the reader went away): logging must not take
            # the process down with it.
            pass


class _Logger:
    """The structlog logger: every method hands the rendered line to the writer."""

    __slots__ = ("_writer",)

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def msg(self, message: bytes | str) -> None:
        self._writer.write(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _LineHandler(logging.Handler):
    """Standard-library records, formatted by structlog, through the same writer."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


_writer: LineWriter | None = None


def configure_logging(
    level: str = "INFO",
    fmt: Literal["json", "console"] = "json",
    *,
    process: str | None = None,
    stream: BinaryIO | None = None,
) -> LineWriter:
    """Configure structlog and the standard library for this process.

    ``process`` (``api``, ``worker``, ...) is added to every line so mixed
    output from ``gateway dev`` can be told apart. Returns the writer, whose
    :meth:`LineWriter.flush` writes pending lines at once.
    """
    global _writer  # one writer per process, like the logging configuration itself
    if _writer is not None:
        _writer.flush()
    writer = _writer = LineWriter(stream if stream is not None else sys.stdout.buffer)
    atexit.register(writer.flush)

    shared: list[Processor] = [structlog.contextvars.merge_contextvars, _Stamp(process)]
    renderer: Processor = (
        _render_json if fmt == "json" else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    numeric_level = logging.getLevelNamesMapping()[level]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda *_: _Logger(writer),
        cache_logger_on_first_use=True,
    )

    handler = _LineHandler(writer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _drop_color_message],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _as_text(renderer),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "httpx", "pymongo"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    # One access line per request is our own `http.request` event; uvicorn's would double it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("pymongo").setLevel(logging.WARNING)
    return writer


def _as_text(renderer: Processor) -> Processor:
    """The stdlib formatter must return ``str``; our JSON renderer returns bytes."""

    def render(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        rendered = renderer(logger, name, event_dict)
        return rendered.decode() if isinstance(rendered, bytes) else str(rendered)

    return render
