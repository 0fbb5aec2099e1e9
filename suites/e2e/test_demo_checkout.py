"""`creditgate serve --demo`: the whole money loop in a real headless browser, and no secret in its JSON logs.

The demo's fake Stripe serves the hosted Checkout page; Chromium (Debian's, driven by Playwright) opens the URL
``POST /billing/checkout`` returned and presses Pay; the page completes the session and delivers the signed
webhook to the gateway; the credits land once, even when the page sends the webhook again.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from creditgate.system import demo
from creditgate.testing.auditor import audit_url
from creditgate_harness.services.base import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def browser_binary() -> str | None:
    """Debian's Chromium (or $CHROMIUM_PATH); Playwright's own browser downloads are never used."""
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", "chromium", "chromium-browser"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


@pytest.fixture
def chromium() -> str:
    """The browser binary; without one the test is skipped with the reason — but never under CI=true."""
    path = browser_binary()
    if path is None:
        reason = "no Chromium binary (apt-get install chromium, or set CHROMIUM_PATH)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the browser test")
        pytest.skip(reason)
    return path


@dataclass
class Demo:
    url: str
    key: str
    database: Path
    log: Path
    fernet_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[Demo]:
    """`creditgate serve --demo` in a subprocess, logging JSON at debug level to ``log``."""
    port = free_port()
    out, log = tmp_path / "stdout.txt", tmp_path / "server.log"
    env = {
        **os.environ,
        "CREDITGATE_LOG_FORMAT": "json",
        "CREDITGATE_BYOK_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    with out.open("w") as stdout, log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "creditgate.cli", "serve", "--demo", "--port", str(port), "--log-level", "debug"],
            cwd=tmp_path,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the demo exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the demo did not start:\n{log.read_text()}"
            key = next((w for w in out.read_text().split() if w.startswith("cg_")), None)
            try:
                if key and httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield Demo(url, key, tmp_path / "creditgate-demo.db", log, env["CREDITGATE_BYOK_ENCRYPTION_KEY"])
    finally:
        process.terminate()
        process.wait(15)


def purchases(database: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT account_id, amount FROM ledger_entries WHERE type = 'purchase'").fetchall()


def test_demo_top_up_in_a_headless_browser_lands_once(chromium: str, demo_server: Demo, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    api = httpx.Client(base_url=demo_server.url, headers=demo_server.headers, timeout=30)
    before = Decimal(api.get("/user/balance").json()["balance"])
    checkout = api.post("/billing/checkout", json={"amount_usd": "10.00"})
    assert checkout.status_code == 200, checkout.text
    assert checkout.json()["credits"] == "1000.00"
    page_url = checkout.json()["url"]
    assert page_url.startswith(f"{demo_server.url}{demo.STRIPE_PATH}/c/pay/cs_")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.goto(page_url)
            expect(page.locator("#amount")).to_have_text("$10.00")
            page.locator("#pay").click()
            expect(page.locator("#status")).to_have_text("Payment succeeded")
            expect(page.locator(".delivery .outcome")).to_have_text(["credited"])
            page.screenshot(path=str(tmp_path / "paid.png"))
            # Stripe delivers at least once: the same signed event again credits nothing.
            page.locator("#resend").click()
            expect(page.locator(".delivery .outcome")).to_have_text(["credited", "duplicate"])
            # Back to the form and Pay again: the session is paid, nothing completes twice.
            page.go_back()
            page.go_back()
            page.reload()
            expect(page.locator("#status")).to_have_text("Payment succeeded")
            expect(page.locator("#pay")).to_have_count(0)
            page.locator("#continue").click()
            expect(page.locator("#status")).to_have_text("Thank you")
        finally:
            browser.close()

    again = httpx.post(page_url, follow_redirects=False)  # a resubmitted form
    assert again.status_code == 303
    after = Decimal(api.get("/user/balance").json()["balance"])
    assert after - before == Decimal(1000)
    payments = api.get("/billing/payments").json()["data"]
    assert [(p["status"], p["credits"]) for p in payments] == [("paid", "1000.00")]
    assert len(purchases(demo_server.database)) == 1
    assert audit_url(f"sqlite+aiosqlite:///{demo_server.database}").ok


def test_demo_logs_are_json_and_hold_no_secret(demo_server: Demo) -> None:
    """A full run through the demo — chat, stream, BYOK key, bad key, checkout, signed webhooks — then grep."""
    byok_key = "sk-proj-demoBYOKsecret0123456789abcdef"
    with httpx.Client(base_url=demo_server.url, headers=demo_server.headers, timeout=30) as api:
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        assert api.post("/v1/chat/completions", json=chat).status_code == 200
        with api.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as stream:
            assert stream.status_code == 200
            stream.read()
        assert api.post("/user/provider-keys", json={"provider": "demo", "api_key": byok_key}).status_code in (
            200,
            201,
        )
        assert api.post("/v1/chat/completions", json=chat).status_code == 200  # through the BYOK key
        wrong = {"Authorization": f"Bearer {demo_server.key[:-4]}XXXX"}
        assert api.post("/v1/chat/completions", json=chat, headers=wrong).status_code == 401
        checkout = api.post("/billing/checkout", json={"amount_usd": "5.00"}).json()
        assert httpx.post(checkout["url"]).status_code == 303  # Pay: signed webhook to the gateway
        assert httpx.post(checkout["url"] + "/resend").status_code == 303
        assert api.get("/metrics").status_code == 200
    time.sleep(0.5)
    log = demo_server.log.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is one JSON object
    webhook_lines = [entry for entry in lines if entry.get("route") == "/billing/webhook"]
    assert [entry["status"] for entry in webhook_lines] == [200, 200]
    assert any(entry.get("credits") for entry in lines if entry.get("route") == "/v1/chat/completions")
    assert any(entry["level"] == "debug" for entry in lines)  # the most talkative level, and still no secret
    secrets = (demo_server.key, byok_key, demo_server.fernet_key, demo.STRIPE_KEY, demo.STRIPE_WEBHOOK_SECRET)
    for secret in secrets:
        assert secret not in log
        assert secret[-12:] not in log  # nor a tail of it
