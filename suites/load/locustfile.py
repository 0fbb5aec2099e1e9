"""Load scenarios for the gateway (run headless by `nox -s load`; see suites/load/run.py).

Keys come from LOAD_KEYS_FILE (JSON: {"users": [...], "org_members": [...]}) written by run.py.
Every request goes to the --host given to locust, which run.py sets to a loopback gateway.
When locust quits, LOAD_STATUS_FILE (if set; a single-process run) gets a count per endpoint and HTTP status,
the scenarios' exceptions and the run's duration, for suites/load/summary.py.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import random
import time
from collections import Counter, defaultdict
from typing import Any

from locust import FastHttpUser, between, events, task

KEYS = json.loads(open(os.environ["LOAD_KEYS_FILE"]).read())  # noqa: SIM115 - read once at import
_users = itertools.cycle(KEYS["users"])
_members = itertools.cycle(KEYS["org_members"])
CHAT = {"model": "test-model", "max_tokens": 50, "messages": [{"role": "user", "content": "load"}]}
_statuses: defaultdict[str, Counter[int]] = defaultdict(Counter)


@events.request.add_listener
def _count_status(name: str, response: Any, **_: Any) -> None:
    _statuses[name][getattr(response, "status_code", 0) or 0] += 1


@events.quitting.add_listener
def _write_statuses(environment: Any, **_: Any) -> None:
    if not (path := os.environ.get("LOAD_STATUS_FILE")):  # locust run by hand
        return
    exceptions = sum(e["count"] for e in environment.runner.exceptions.values())
    total = environment.stats.total  # the time span locust divides by for its req/s
    duration = (total.last_request_timestamp or total.start_time) - total.start_time
    with open(path, "w") as f:
        json.dump({"statuses": _statuses, "exceptions": exceptions, "duration_s": duration}, f)


def _ok(response) -> None:  # type: ignore[no-untyped-def]
    """2xx passes, and so do 402 (out of credits) and 429 (over quota): the gateway doing its job."""
    if 200 <= response.status_code < 300 or response.status_code in (402, 429):
        response.success()
    else:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


class DeductingUser(FastHttpUser):
    """Many users, each spending their own balance concurrently."""

    weight = 3
    wait_time = between(0, 0.05)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {next(_users)}"}

    @task(4)
    def chat(self) -> None:
        with self.client.post(
            "/v1/chat/completions", json=CHAT, headers=self.headers, catch_response=True, name="chat"
        ) as r:
            _ok(r)

    @task(1)
    def stream(self) -> None:
        with self.client.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers=self.headers,
            catch_response=True,
            name="chat stream",
        ) as r:
            _ok(r)


class OrgMember(FastHttpUser):
    """Many members of one org on one shared balance: the hot row."""

    weight = 2
    wait_time = between(0, 0.05)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {next(_members)}"}

    @task
    def chat(self) -> None:
        with self.client.post(
            "/v1/chat/completions", json=CHAT, headers=self.headers, catch_response=True, name="org chat"
        ) as r:
            _ok(r)


class WebhookStorm(FastHttpUser):
    """Signed Stripe events, each sent several times: every one is acknowledged, none credits twice."""

    weight = 1
    wait_time = between(0, 0.1)
    secret = os.environ.get("LOAD_WEBHOOK_SECRET", "whsec_load")

    @task
    def storm(self) -> None:
        event = {
            "id": f"evt_load_{random.randrange(200)}",
            "object": "event",
            "type": "customer.created",
            "data": {"object": {"id": "cus_x"}},
        }
        payload = json.dumps(event).encode()
        t = int(time.time())
        sig = hmac.new(self.secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
        headers = {"Stripe-Signature": f"t={t},v1={sig}", "Content-Type": "application/json"}
        with self.client.post(
            "/billing/webhook", data=payload, headers=headers, catch_response=True, name="webhook"
        ) as r:
            _ok(r)
