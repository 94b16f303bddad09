"""Locust users posting signed courier events to ``POST /v1/events/{source}``.

Run it through ``gateway loadtest`` (which starts the stack, runs Locust
headless and checks docs/contract.md §6), or by hand from the repository root::

    GATEWAY_SOURCES_FILE=sources.json LOADTEST_RATE=50 \\
        python -m locust -f scripts/proof/loadtest/locustfile.py --headless \\
        -u 100 -r 50 -t 60s --host http://127.0.0.1:8000

Every request is signed when it is sent, the way its source's adapter
expects (Standard Webhooks, ``hex``, or a carrier's own scheme), with the
source's first configured secret, read from ``GATEWAY_SOURCES`` /
``GATEWAY_SOURCES_FILE`` — never from argv. Users are spread over the
configured sources in turn, each speaking its source's dialect, so the load
is the adapter mix of :mod:`scripts.traffic.carriers` (canonical, EasyPost,
UPS, AfterShip in the stacks this project starts). What each user sends
(lifecycles with mixed event types, resends, out-of-order pairs) is
:class:`scripts.traffic.events.EventStream`. Configuration
(``LOADTEST_*``, see :meth:`~scripts.proof.loadtest.records.LoadConfig.from_env`):

* ``LOADTEST_RATE`` — target requests/s of all users together (default 40;
  0 = unpaced); each user sends ``rate / users`` requests/s on a fixed
  schedule starting at a random phase, so the load is even, not bursty;
* ``LOADTEST_DUPLICATE_RATIO`` (0.1), ``LOADTEST_OUT_OF_ORDER_RATIO`` (0.1);
* ``LOADTEST_SOURCE`` — comma-separated sources (default: every configured one);
* ``LOADTEST_RECORD_DIR`` — where each process writes one JSON line per
  request (key, shipment, status, kind, latency);
* ``LOADTEST_RUN_ID``, ``LOADTEST_SEED`` — id prefix and random seed.

A request succeeds in Locust's statistics when it is answered 202 (accepted)
or 200 (duplicate); anything else, and no answer at all, is a failure.

This module imports Locust, which monkey-patches the process with gevent:
only the Locust process may import it.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from typing import Any

from locust import FastHttpUser, events, task

from scripts.commands.sign import sign_body
from scripts.proof.loadtest.records import LoadConfig, Recorder, SentRecord
from scripts.traffic.events import EventStream

CONFIG = LoadConfig.from_env(os.environ)
_user_numbers = itertools.count(1)
_recorder = Recorder(CONFIG.record_dir) if CONFIG.record_dir is not None else None


def _close_recorder(**_: Any) -> None:
    if _recorder is not None:
        _recorder.close()


events.quitting.add_listener(_close_recorder)  # type: ignore[no-untyped-call]  # Locust is untyped here


class Courier(FastHttpUser):
    """One courier: sends its event stream at its share of ``LOADTEST_RATE``."""

    def on_start(self) -> None:
        number = next(_user_numbers)
        self.source, self.config = CONFIG.sources[(number - 1) % len(CONFIG.sources)]
        prefix = f"lt{CONFIG.run_id}p{os.getpid():x}u{number}"
        seed = f"{CONFIG.seed}:{os.getpid()}:{number}" if CONFIG.seed is not None else None
        self.stream = EventStream(
            random.Random(seed),
            prefix,
            duplicate_ratio=CONFIG.duplicate_ratio,
            out_of_order_ratio=CONFIG.out_of_order_ratio,
            adapter=self.config.kind,
        )
        self.path = f"/v1/events/{self.source}"
        users = max(1, self.environment.parsed_options.num_users or 1)
        rate = CONFIG.rate_per_s / users
        self._interval = 1 / rate if rate > 0 else 0.0
        # Users spawned within a second would send in bursts, one every interval,
        # all together. Each starts at a random phase of its interval and keeps it.
        # (Locust's constant_throughput measures from the user's creation, so it
        # would pull a delayed first request back into step with the others.)
        time.sleep(random.Random(seed).uniform(0, self._interval))
        self._next_at = time.monotonic()

    def wait_time(self) -> float:
        """One request per interval on this user's schedule; a late user does not catch up."""
        if not self._interval:
            return 0.0
        now = time.monotonic()
        self._next_at = max(self._next_at + self._interval, now)
        return self._next_at - now

    @task
    def send_event(self) -> None:
        outgoing = self.stream.next()
        headers = sign_body(self.config, outgoing.body, now=time.time(), msg_id=outgoing.msg_id)
        headers["content-type"] = "application/json"
        with self.client.post(
            self.path,
            data=outgoing.body,  # type: ignore[arg-type]  # bytes are sent as is
            headers=headers,
            name="/v1/events/[source]",
            catch_response=True,
        ) as response:
            status = int(response.status_code or 0)
            if status in (200, 202):
                response.success()
            else:
                response.failure(f"HTTP {status}" if status else "no answer")
            if _recorder is not None:
                _recorder.write(
                    SentRecord(
                        key=f"{self.source}:{outgoing.event_id}",
                        shipment=f"{self.source}:{outgoing.shipment_id}",
                        status=status,
                        kind=outgoing.kind,
                        ms=round(float(response.request_meta["response_time"]), 3),
                    )
                )
