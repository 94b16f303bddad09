"""The console in real Chromium against the real stack (docs/contract.md §3.5).

One stack for the module (``gateway api`` with the admin token, two ``gateway
worker`` processes, Redis, the MongoDB-wire server, the mock downstream) and
one browser: Debian's ``chromium`` driven by the ``playwright`` package
(Playwright's own browser download is not used). Courier events are signed
and POSTed to the ingest port like a courier would.

The latency of a worker's status change reaching an open page is measured and
printed (median, p95), never asserted. With ``GATEWAY_CONSOLE_SCREENSHOTS=DIR``
the tests save their screenshots there (``docs/console/`` in the repository).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from scripts.devstack.stack import Stack, StackOptions
from scripts.harness.services import free_port
from tests.factories import TEST_SECRETS, event_body, our_headers

CHROMIUM = shutil.which("chromium")
# No skip when chromium is missing: a skipped browser test would pass as coverage.
pytestmark = pytest.mark.slow
TOKEN = "adm_" + secrets.token_urlsafe(24)  # generated per run
ADMIN = {"authorization": f"Bearer {TOKEN}"}
SHOTS = os.environ.get("GATEWAY_CONSOLE_SCREENSHOTS")


def shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


class Gateway:
    """The running stack, seen from outside: ingest and the mock's controls."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.url = stack.api_url
        self.http = httpx.Client(timeout=10)
        self.mock = f"http://127.0.0.1:{stack.mock_port}"

    def send(self, event_id: str, **overrides: Any) -> str:
        body = event_body(event_id, **overrides)
        answer = self.http.post(
            f"{self.url}/v1/events/acme", content=body, headers=our_headers(body)
        )
        assert answer.status_code == 202, answer.text
        return f"acme:{event_id}"

    def send_new(
        self, downstream_status: int, event_id: str | None = None, **overrides: Any
    ) -> tuple[str, str]:
        """Send a new event the downstream answers ``downstream_status``; its id and key."""
        event_id = event_id or f"evt_{secrets.token_hex(4)}"
        key = f"acme:{event_id}"
        self.downstream(always={key: downstream_status})
        self.send(event_id, **overrides)
        return event_id, key

    def downstream(self, **rules: Any) -> None:
        self.http.post(f"{self.mock}/control", json=rules).raise_for_status()

    def admin(self, path: str) -> Any:
        answer = self.http.get(f"{self.url}/v1/admin{path}", headers=ADMIN)
        answer.raise_for_status()
        return answer.json()

    def wait_status(self, key: str, status: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self.http.get(f"{self.url}/v1/admin/events/{key}", headers=ADMIN)
            if answer.status_code == 200 and answer.json()["status"] == status:
                return
            assert time.monotonic() < deadline, f"{key} never reached {status}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    options = StackOptions(
        port=free_port(),
        workers=2,
        mock_downstream=True,
        log_dir=tmp_path_factory.mktemp("stack-logs"),
        env={
            "GATEWAY_ADMIN_TOKEN": TOKEN,
            "GATEWAY_SOURCES": json.dumps({"acme": {"secrets": list(TEST_SECRETS)}}),
            "GATEWAY_MAX_ATTEMPTS": "30",
            "GATEWAY_BACKOFF_BASE_S": "0.3",
            "GATEWAY_BACKOFF_MULTIPLIER": "1",
            "GATEWAY_BACKOFF_CAP_S": "0.3",
            "GATEWAY_LOG_LEVEL": "WARNING",
        },
    )
    stack = Stack(options)
    stack.start()
    try:
        gateway = Gateway(stack)
        yield gateway
        gateway.http.close()
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None, "Debian's chromium is missing: run ./.ci/bootstrap --test-tools"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser: Browser, gateway: Gateway) -> Iterator[BrowserContext]:
    made = browser.new_context(base_url=gateway.url, viewport={"width": 1280, "height": 900})
    made.set_default_timeout(15_000)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    """A logged-in console page."""
    page = context.new_page()
    page.goto("/console/login")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Last hour")
    return page


def test_login_refuses_a_wrong_token_and_accepts_the_right_one(context: BrowserContext) -> None:
    page = context.new_page()
    page.goto("/console/dead-letters")
    assert page.url.endswith("/console/login")
    shot(page, "login")
    page.fill("#token", "not-the-token")
    with page.expect_response("**/console/login") as answer:
        page.click("button[type=submit]")
    assert answer.value.status == 401
    expect(page.locator(".error")).to_contain_text("not the admin token")
    assert not [c for c in context.cookies() if c["name"] == "gateway_console"]
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Last hour")
    (cookie,) = [c for c in context.cookies() if c["name"] == "gateway_console"]
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert TOKEN not in page.url


def test_an_events_retries_then_succeeded_arrive_without_a_reload(
    page: Page, gateway: Gateway
) -> None:
    event_id = f"evt_{secrets.token_hex(4)}"
    _, key = gateway.send_new(
        503,
        event_id,
        shipment={
            "id": f"shp_{event_id}",
            "order_id": "ord_1",
            "tracking_number": f"TRK{event_id}",
        },
    )
    page.goto(f"/console/events/{key}")
    page.evaluate("window.notReloaded = true")
    expect(page.locator("#live")).to_contain_text("attempt 2 failed")
    gateway.downstream(always={})
    expect(page.locator("#event-status")).to_have_text("succeeded", timeout=20_000)
    assert page.evaluate("window.notReloaded") is True
    expect(page.locator("#live")).to_contain_text("downstream_unavailable")
    shot(page, "event-timeline")

    # Search by tracking number: the shipment, whose history links back to the event.
    page.fill("header input[name=q]", f"TRK{event_id}")
    page.press("header input[name=q]", "Enter")
    expect(page.locator("#live")).to_contain_text("tracking_number")
    shot(page, "search")
    page.click(f"text=shipment shp_{event_id}")
    expect(page.locator("h1")).to_contain_text(f"shp_{event_id}")
    shot(page, "shipment")
    page.get_by_role("link", name=event_id, exact=True).click()
    expect(page.locator("h1")).to_contain_text(key)


def test_a_dead_letter_filtered_dry_run_replay_and_succeeded_live(
    page: Page, gateway: Gateway
) -> None:
    _, key = gateway.send_new(422)
    gateway.wait_status(key, "dead_lettered")

    page.goto("/console/dead-letters")
    page.select_option("select[name=status]", "pending")
    page.fill("input[name=code]", "downstream_rejected")
    page.click("#filter")
    expect(page.locator("#dead-letters")).to_contain_text(key)
    shot(page, "dead-letters")
    page.click("#replay-matching")
    expect(page.locator("#replay-count")).to_contain_text("would be replayed")
    expect(page.locator("#live")).to_contain_text(key)
    assert gateway.admin(f"/dead-letters/{key}")["status"] == "pending"  # a dry run changes nothing
    shot(page, "replay-dry-run")

    gateway.downstream(always={})
    page.click("#confirm-replay")
    expect(page.locator("#replay-summary")).to_contain_text("enqueued")
    page.goto(f"/console/events/{key}")
    page.evaluate("window.notReloaded = true")
    expect(page.locator("#event-status")).to_have_text("succeeded", timeout=20_000)
    assert page.evaluate("window.notReloaded") is True


def test_discard_with_a_reason_and_a_post_without_csrf_is_refused(
    page: Page, gateway: Gateway
) -> None:
    _, key = gateway.send_new(400)
    page.goto(f"/console/events/{key}")
    expect(page.locator("#event-status")).to_have_text("dead_lettered", timeout=20_000)
    expect(page.locator("#discard")).to_be_visible()

    # The browser's own session cookie, but no CSRF token: refused, nothing changes.
    forged = page.request.post(f"/console/dead-letters/{key}/discard", form={"reason": "forged"})
    assert forged.status == 403
    assert gateway.admin(f"/dead-letters/{key}")["status"] == "pending"

    page.fill("input[name=reason]", "test parcel, courier confirmed it never shipped")
    page.click("#discard")
    expect(page.locator(".notice")).to_contain_text("discarded")
    expect(page.locator("#live")).to_contain_text("courier confirmed it never shipped")
    assert gateway.admin(f"/dead-letters/{key}")["status"] == "discarded"


def test_measure_status_changes_reaching_an_open_page(page: Page, gateway: Gateway) -> None:
    """Worker's clock at the change → the page's EventSource handler; reported, not asserted."""
    gateway.downstream(always={})
    page.goto("/console/")
    expect(page.locator("#live-state")).to_have_text("live")
    keys = [gateway.send(f"evt_lat{n}_{secrets.token_hex(3)}") for n in range(60)]
    deadline = time.monotonic() + 30
    while True:
        changes = page.evaluate("window.gatewayChanges || []")
        done = {
            c["change"]["idempotency_key"] for c in changes if c["change"]["status"] == "succeeded"
        }
        if set(keys) <= done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    latencies = [
        c["received"] - c["change"]["at_ms"]
        for c in changes
        if c["change"]["idempotency_key"] in set(keys)
    ]
    assert set(keys) <= done, "every change reached the page"
    latencies.sort()
    median = statistics.median(latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    shot(page, "overview")
    print(
        f"\nconsole live latency over {len(latencies)} changes: median {median:.0f} ms, "
        f"p95 {p95:.0f} ms, max {latencies[-1]:.0f} ms"
    )
