"""The load of ``gateway bench-ingest``: pre-signed raw requests replayed by wrk, and
wrk's output parsed."""

from __future__ import annotations

import re
import resource
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scripts.commands.sign import sign_body
from scripts.proof.bench.ingest.model import (
    SOURCE,
    STATUS_MARKER,
    BenchError,
    BenchOptions,
    WrkStats,
)
from scripts.traffic.carriers import CANONICAL_SOURCE, render, traffic_sources
from scripts.traffic.events import PlannedEvent
from shared.adapters.config import parse_source_config
from shared.contracts import EventType

# Each wrk thread replays its own file of NUL-separated raw HTTP requests, so no
# two connections send the same event id. Globals (not locals) are what
# thread:get() can read back in done().
WRK_LUA = r"""
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  requests_ = {}
  count = 0
  index = 0
  wraps = 0
  s202 = 0
  s200 = 0
  s2xx = 0
  other = 0
  local f = assert(io.open(args[1] .. "/requests." .. id .. ".bin", "rb"))
  local data = f:read("*a")
  f:close()
  local pos = 1
  while true do
    local stop = string.find(data, "\0", pos, true)
    if not stop then break end
    count = count + 1
    requests_[count] = string.sub(data, pos, stop - 1)
    pos = stop + 1
  end
  assert(count > 0, "no requests in the data file")
end

function request()
  index = index + 1
  if index > count then
    index = 1
    wraps = wraps + 1
  end
  return requests_[index]
end

function response(status, headers, body)
  if status == 202 then
    s202 = s202 + 1
  elseif status == 200 then
    s200 = s200 + 1
  elseif status >= 200 and status < 300 then
    s2xx = s2xx + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local t = {s202 = 0, s200 = 0, s2xx = 0, other = 0, wraps = 0}
  for _, thread in ipairs(threads) do
    for key, _ in pairs(t) do
      t[key] = t[key] + thread:get(key)
    end
  end
  io.write(string.format("__MARKER__ %d %d %d %d %d\n", t.s202, t.s200, t.s2xx, t.other, t.wraps))
end
""".replace("__MARKER__", STATUS_MARKER)


__all__ = [
    "WRK_LUA",
    "RouteRequests",
    "parse_wrk_output",
    "run_wrk",
    "taskset",
    "write_request_pool",
]

# ---------------------------------------------------------------- requests


class RouteRequests:
    """Requests of one route: events shaped as its carrier sends them, signed by its adapter.

    The bodies come from :func:`scripts.traffic.carriers.render` and the headers
    from the adapter's own ``sign`` (:func:`scripts.commands.sign.sign_body`), as
    in the load test and the chaos run; the source has a fresh secret.
    """

    def __init__(self, route: str) -> None:
        self.route = route
        sources = traffic_sources()
        self.source: dict[str, Any] = sources[CANONICAL_SOURCE if route == "standard" else route]
        """The source's entry in ``GATEWAY_SOURCES`` (holds the secret: never print it)."""
        self.config = parse_source_config(SOURCE, self.source)

    def build(self, event_id: str, shipment_id: str, now: float) -> tuple[bytes, dict[str, str]]:
        """The body and signature headers of one ``in_transit`` update sent at ``now``."""
        event = PlannedEvent(
            event_id=event_id,
            event_type=EventType.IN_TRANSIT,
            occurred_at=datetime.fromtimestamp(int(now), UTC),
            shipment_id=shipment_id,
            order_id=shipment_id.replace("shp_", "ord_", 1),
            tracking_number="1Z" + shipment_id.removeprefix("shp_").zfill(10),
            location=(52.52, 13.405),
        )
        rendered = render(event, self.route)
        # webhook-id (Standard Webhooks only) is the event id, so no two requests share one.
        return rendered.body, sign_body(self.config, rendered.body, now=now, msg_id=event_id)

    def raw(self, event_id: str, shipment_id: str, now: float) -> bytes:
        """The whole HTTP/1.1 request of :meth:`build`'s event, as wrk sends it."""
        body, headers = self.build(event_id, shipment_id, now)
        head = (
            f"POST /v1/events/{SOURCE} HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            + "\r\n"
        )
        return head.encode() + body


def write_request_pool(
    directory: Path, requests: RouteRequests, *, count: int, files: int, now: float, nonce: str
) -> None:
    """Sign ``count`` unique events at ``now`` into ``files`` NUL-separated request files."""
    handles = [(directory / f"requests.{n}.bin").open("wb") for n in range(files)]
    try:
        for index in range(count):
            handle = handles[index % files]
            handle.write(requests.raw(f"evt_{nonce}_{index}", f"shp_{index}", now))
            handle.write(b"\0")
    finally:
        for handle in handles:
            handle.close()


# ---------------------------------------------------------------- wrk

_LATENCY_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(value: str, unit: str) -> float:
    return float(value) * _LATENCY_UNITS_MS[unit]


def parse_wrk_output(text: str) -> WrkStats:
    """Requests/s, p50/p99 (from ``--latency``), errors and our status counts from wrk's output."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, flags=re.MULTILINE)
        if match is None:
            raise BenchError(f"wrk output has no line matching {pattern!r}:\n{text}")
        return match

    percentiles = {
        int(m.group(1)): _latency_ms(m.group(2), m.group(3))
        for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", text, flags=re.MULTILINE)
    }
    if 50 not in percentiles or 99 not in percentiles:
        raise BenchError(f"wrk output has no latency distribution (run with --latency):\n{text}")
    totals = find(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m)")
    duration_s = (
        float(totals.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[totals.group(3)]
    )
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    status = find(rf"^{STATUS_MARKER} (\d+) (\d+) (\d+) (\d+) (\d+)$")
    return WrkStats(
        requests=int(totals.group(1)),
        duration_s=duration_s,
        requests_per_s=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        status_202=int(status.group(1)),
        status_200=int(status.group(2)),
        status_other_2xx=int(status.group(3)),
        status_other=int(status.group(4)),
        pool_wraps=int(status.group(5)),
    )


def taskset(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    url: str, *, seconds: int, options: BenchOptions, lua: Path, data_dir: Path
) -> tuple[WrkStats, str, float]:
    """One wrk run against ``url``: the parsed stats, wrk's raw output and wrk's CPU seconds."""
    command = [
        *taskset(options.client_cpus),
        "wrk",
        f"--threads={options.threads}",
        f"--connections={options.connections}",
        f"--duration={seconds}s",
        "--timeout=5s",
        "--latency",
        f"--script={lua}",
        url,
        "--",
        str(data_dir),
    ]
    cpu_before = _children_cpu_s()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    cpu_s = _children_cpu_s() - cpu_before
    if result.returncode != 0:
        raise BenchError(f"wrk exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return parse_wrk_output(result.stdout), result.stdout, cpu_s
