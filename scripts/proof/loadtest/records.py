"""What the load test's locustfile is told (``LOADTEST_*``) and what it writes down: one
:class:`SentRecord` per request, in a JSON-lines file per Locust process (:class:`Recorder`),
so ``gateway loadtest`` checks SC-002/SC-003 against exactly the keys that were
acknowledged. Nothing here imports Locust.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Final, Self

import msgspec
from msgspec import Struct

from scripts.traffic.events import Kind
from shared.settings import SettingsError, SourceConfig, load_settings

__all__ = ["RECORD_PREFIX", "LoadConfig", "Recorder", "SentRecord", "read_records"]

RECORD_PREFIX: Final = "requests-"


class LoadConfig(Struct, frozen=True, kw_only=True):
    """What the locustfile needs, from ``LOADTEST_*`` and the gateway's source variables.

    ``rate_per_s`` is the target request rate of *all* users together
    (0: every user sends as fast as it gets answers).
    """

    sources: tuple[tuple[str, SourceConfig], ...]
    """The traffic mix: Locust user ``n`` speaks for source ``n mod len``, in its dialect."""
    duplicate_ratio: float = 0.1
    out_of_order_ratio: float = 0.1
    rate_per_s: float = 40.0
    record_dir: Path | None = None
    run_id: str = ""
    seed: int | None = None

    @property
    def source(self) -> str:
        """The first source of the mix."""
        return self.sources[0][0]

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        """Read the configuration; :class:`ValueError` names the variable that is wrong.

        ``GATEWAY_SOURCES`` / ``GATEWAY_SOURCES_FILE`` give the sources' secrets
        (never argv); ``LOADTEST_SOURCE`` picks the sources, comma-separated
        (default: every configured one, so the load is the adapter mix).
        """
        names = ("GATEWAY_SOURCES", "GATEWAY_SOURCES_FILE")
        try:
            sources = load_settings({k: environ[k] for k in names if k in environ}).sources
        except SettingsError as exc:
            raise ValueError(str(exc)) from exc
        if not sources:
            raise ValueError("GATEWAY_SOURCES_FILE: no source configured to sign for")
        chosen = [s for s in environ.get("LOADTEST_SOURCE", "").split(",") if s] or list(sources)
        for source in chosen:
            if source not in sources:
                raise ValueError(f"LOADTEST_SOURCE: {source!r} is not a configured source")
        record_dir = environ.get("LOADTEST_RECORD_DIR")
        seed = environ.get("LOADTEST_SEED")
        return cls(
            sources=tuple((source, sources[source]) for source in chosen),
            duplicate_ratio=_ratio(environ, "LOADTEST_DUPLICATE_RATIO", 0.1),
            out_of_order_ratio=_ratio(environ, "LOADTEST_OUT_OF_ORDER_RATIO", 0.1),
            rate_per_s=_number(environ, "LOADTEST_RATE", 40.0),
            record_dir=Path(record_dir) if record_dir else None,
            run_id=environ.get("LOADTEST_RUN_ID") or uuid.uuid4().hex[:6],
            seed=int(seed) if seed else None,
        )


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name}: must not be negative, got {raw!r}")
    return value


def _ratio(environ: Mapping[str, str], name: str, default: float) -> float:
    value = _number(environ, name, default)
    if value > 1:
        raise ValueError(f"{name}: must be between 0 and 1, got {value:g}")
    return value


class SentRecord(Struct, frozen=True, kw_only=True):
    """One request as the load generator saw it.

    ``key`` is the idempotency key, ``shipment`` the ``active_shipments``
    ``_id`` (both ``{source}:{id}``); ``status`` 0 means no HTTP answer;
    ``ms`` is the latency Locust measured.
    """

    key: str
    shipment: str
    status: int
    kind: Kind
    ms: float


_record_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(SentRecord)


class Recorder:
    """Appends :class:`SentRecord` lines to ``requests-<pid>.jsonl`` in ``directory``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{RECORD_PREFIX}{os.getpid()}.jsonl"
        self._file: IO[bytes] | None = self.path.open("ab")

    def write(self, record: SentRecord) -> None:
        if self._file is not None:
            self._file.write(_record_encoder.encode(record) + b"\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_records(directory: Path) -> list[SentRecord]:
    """Every record the load generator's processes wrote to ``directory``."""
    records: list[SentRecord] = []
    for path in sorted(directory.glob(f"{RECORD_PREFIX}*.jsonl")):
        records.extend(_decode_lines(path.read_bytes().splitlines()))
    return records


def _decode_lines(lines: Iterable[bytes]) -> Iterable[SentRecord]:
    for line in lines:
        if line.strip():
            yield _record_decoder.decode(line)
