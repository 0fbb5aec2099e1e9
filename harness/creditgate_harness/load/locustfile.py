"""Load scenarios for any app, through its ``LoadAdapter`` (run headless by the runner, runner.py).

Read from the environment: ``LOAD_ADAPTER`` (``module:Class``) and ``LOAD_ADAPTER_OPTIONS`` (JSON keyword arguments)
build the adapter in each locust process; ``LOAD_PLAN_FILE`` names the run's clients (``Accounts.plan()``).
Every paid prompt carries ``marker(rid, account)`` so the fake upstream's record names the request and the account
(the money oracle's input, creditgate_harness/oracle.py).

Users: ``Spender`` (the clients with an account of their own, the adapter's unshared scenarios) and
``SharedSpender`` (the clients sharing one account, e.g. an org's members: the hot row; the unshared clients when
there are none). With ``LOAD_STRIPE_URL`` (the fake Stripe the app is configured with) and an adapter that tops up,
``Payer``: checkout, the payment completed at the fake Stripe, its webhook delivered three times, shuffled and
concurrently (each delivery retried until answered, as Stripe does), while the same accounts keep spending.
Without it, and with a ``webhook_path``: a storm of duplicated signed ``customer.created`` events.
LOAD_SHAPE=steady|ramp|spike|soak (with LOAD_USERS, LOAD_SECONDS): a LoadTestShape instead of -u/-r/-t; it also
ends the run early once LOAD_STOP_FILE exists (the chaos runner stops the load a fixed time after recovery).

When locust quits, the master (or the single process) writes LOAD_STATUS_FILE (a count per endpoint and HTTP
status, the scenarios' exceptions, the duration locust divides by, the paid scenarios' names) and
LOAD_RECORDS_FILE (one JSON line per request: rid, account, name, status, stream, complete, start and end times).
Workers send theirs to the master with locust's custom messages, so `--processes N` and master/workers on several
machines give one merged set.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import random
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from typing import Any

import gevent
from locust import FastHttpUser, LoadTestShape, between, events, task
from locust.runners import WORKER_REPORT_INTERVAL, MasterRunner, WorkerRunner

from creditgate_harness.load.adapter import Client, load_adapter
from creditgate_harness.oracle import marker

ADAPTER = load_adapter(os.environ["LOAD_ADAPTER"], json.loads(os.environ.get("LOAD_ADAPTER_OPTIONS") or "{}"))
with open(os.environ["LOAD_PLAN_FILE"]) as _plan:
    CLIENTS = [Client.from_json(row) for row in json.load(_plan)["clients"]]
_own = [c for c in CLIENTS if not c.shared]
_shared_clients = [c for c in CLIENTS if c.shared]
_users = itertools.cycle(_own or CLIENTS)
_members = itertools.cycle(_shared_clients or _own or CLIENTS)
_payees = itertools.cycle(_own or CLIENTS)  # a cycle of its own: payers top up the accounts the first spenders spend
PAID = [s.name for s in ADAPTER.scenarios]
STRIPE_URL = os.environ.get("LOAD_STRIPE_URL", "")
SECRET = os.environ.get("LOAD_WEBHOOK_SECRET", "whsec_load")
WEBHOOK_RETRY_SECONDS = 30.0  # Stripe retries for days; a load run's faults last seconds

_records: list[dict[str, Any]] = []  # this process's requests
_gathered: list[dict[str, Any]] = []  # on the master: the workers' requests
_exceptions = Counter[str]()


def _record(name: str, response: Any, t0: float, **extra: Any) -> dict[str, Any]:
    status = int(getattr(response, "status_code", 0) or 0)
    error = getattr(response, "error", None)
    headers = getattr(response, "headers", None) or {}
    row = {"name": name, "status": status, "t0": t0, "t1": time.time(), "complete": error is None, **extra}
    if request_id := headers.get("X-Request-Id"):  # the app's id for it (a gateway's hold, its usage record)
        row["gateway_id"] = request_id
    _records.append(row)
    return row


def _ok(response) -> None:  # type: ignore[no-untyped-def]
    """2xx passes, and so do 402 (out of credits) and 429 (over quota): the app doing its job."""
    if 200 <= response.status_code < 300 or response.status_code in (402, 429):
        response.success()
    else:
        response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")


class _Spending(FastHttpUser):
    abstract = True
    wait_time = between(0, 0.05)
    clients: Any = _users
    shared = False

    def on_start(self) -> None:
        self.me: Client = next(self.clients)
        mine = [s for s in ADAPTER.scenarios if s.shared == self.shared] or list(ADAPTER.scenarios)
        self.names, self.weights = [s.name for s in mine], [s.weight for s in mine]

    @task
    def spend(self) -> None:
        name = random.choices(self.names, self.weights)[0]
        rid = uuid.uuid4().hex
        call = ADAPTER.request(name, self.me, marker(rid, self.me.account))
        t0 = time.time()
        with self.client.request(
            call.method, call.path, json=call.json, headers=dict(self.me.headers), catch_response=True, name=name
        ) as r:
            row = _record(name, r, t0, rid=rid, account=self.me.account, stream=call.stream)
            if call.stream and 200 <= row["status"] < 300 and b"data: [DONE]" not in (r.content or b""):
                row["complete"] = False  # a stream is whole only with its [DONE]: a cut one may or may not be charged
            _ok(r)
        if row["status"] == 0:  # no answer (an app restarting): back off a little, as a client would
            gevent.sleep(0.1)


class Spender(_Spending):
    """Many clients, each spending an account of its own concurrently."""

    weight = 3


class SharedSpender(_Spending):
    """Many clients on one shared account: the hot row."""

    weight = 2
    clients = _members
    shared = True


def _signed(event: dict[str, Any]) -> tuple[str, dict[str, str]]:
    payload = json.dumps(event)  # ASCII: the bytes sent are the bytes signed
    t = int(time.time())
    sig = hmac.new(SECRET.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return payload, {"Stripe-Signature": f"t={t},v1={sig}", "Content-Type": "application/json"}


def _fake_stripe(method: str, path: str) -> Any:
    # The fake Stripe's test routes (LOAD_STRIPE_URL, an http URL the runner gives): not the app's client.
    request = urllib.request.Request(STRIPE_URL + path, data=b"" if method == "POST" else None, method=method)  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - cooperative: locust patches sockets
        return json.loads(response.read())


if STRIPE_URL and ADAPTER.webhook_path and CLIENTS and ADAPTER.checkout(CLIENTS[0]) is not None:
    _WEBHOOK = ADAPTER.webhook_path

    class Payer(FastHttpUser):
        """Top-ups racing with spending: checkout, pay at the fake Stripe, the webhook 3× shuffled, concurrently."""

        weight = 1
        wait_time = between(0.5, 1.5)

        def on_start(self) -> None:
            self.me: Client = next(_payees)  # the accounts the first Spenders spend, concurrently

        @task
        def top_up(self) -> None:
            call = ADAPTER.checkout(self.me)
            assert call is not None
            t0 = time.time()
            with self.client.request(
                call.method,
                call.path,
                json=call.json,
                headers=dict(self.me.headers),
                catch_response=True,
                name="checkout",
            ) as r:
                _record("checkout", r, t0, account=self.me.account)
                _ok(r)
                if r.status_code != 200:
                    return
                session = r.json()["id"]
            try:  # the customer pays (the fake Stripe's test route), then Stripe sends its event
                _fake_stripe("POST", f"/_test/checkout/sessions/{session}/complete")
                found = _fake_stripe("GET", f"/_test/events?object={session}")
            except OSError as exc:
                _exceptions[f"fake Stripe: {type(exc).__name__}"] += 1
                return
            deliveries = [e for e in found if e["type"] == "checkout.session.completed"] * 3
            random.shuffle(deliveries)
            gevent.joinall([gevent.spawn(self._deliver, e) for e in deliveries])

        def _deliver(self, event: dict[str, Any]) -> None:
            """One delivery, retried with backoff until the app answers 2xx or 4xx, as Stripe retries: an event
            sent only while every worker was down is still delivered (each attempt is a row of its own)."""
            deadline, delay = time.time() + WEBHOOK_RETRY_SECONDS, 0.2
            while True:
                payload, headers = _signed(event)
                t0 = time.time()
                with self.client.post(
                    _WEBHOOK, data=payload, headers=headers, catch_response=True, name="payment webhook"
                ) as r:
                    row = _record("payment webhook", r, t0, account=self.me.account, event=event["id"])
                    _ok(r)
                if 0 < row["status"] < 500 or time.time() > deadline:
                    return
                gevent.sleep(delay)
                delay = min(delay * 2, 5.0)

elif ADAPTER.webhook_path:
    _WEBHOOK = ADAPTER.webhook_path

    class WebhookStorm(FastHttpUser):
        """Signed Stripe events that move no money, each sent several times: acknowledged, applied once."""

        weight = 1
        wait_time = between(0, 0.1)

        @task
        def storm(self) -> None:
            event = {
                "id": f"evt_load_{random.randrange(200)}",
                "object": "event",
                "type": "customer.created",
                "data": {"object": {"id": "cus_x"}},
            }
            payload, headers = _signed(event)
            t0 = time.time()
            with self.client.post(_WEBHOOK, data=payload, headers=headers, catch_response=True, name="webhook") as r:
                _record("webhook", r, t0)
                _ok(r)


SHAPE = os.environ.get("LOAD_SHAPE")
STOP_FILE = os.environ.get("LOAD_STOP_FILE", "")
if SHAPE:

    class LoadShape(LoadTestShape):
        """steady: all users for the whole time; ramp: 0 → all, linearly; spike: a quarter, then all for the
        middle fifth, then a quarter again; soak: half the users, meant for long runs (LOAD_SECONDS=3600)."""

        users = int(os.environ.get("LOAD_USERS", "40"))
        seconds = float(os.environ.get("LOAD_SECONDS", "30"))

        def tick(self) -> tuple[int, float] | None:
            t, n, total = self.get_run_time(), self.users, self.seconds
            if t >= total or (STOP_FILE and os.path.exists(STOP_FILE)):
                if isinstance(self.runner, MasterRunner):
                    # Stop the workers and wait for them before quitting: each sends its records as it stops
                    # (a bare quit gives workers half a second, and their last messages are lost).
                    self.runner.stop()
                    gevent.sleep(WORKER_REPORT_INTERVAL + 0.5)  # every worker's last statistics report arrives
                return None
            if SHAPE == "ramp":
                return max(1, round(n * t / total)), max(n / total, 1.0)
            if SHAPE == "spike":
                return (n, float(n)) if 0.4 * total <= t < 0.6 * total else (max(1, n // 4), float(n))
            if SHAPE == "soak":
                return max(1, n // 2), float(n)
            return n, float(n)


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    if SHAPE and SHAPE not in ("steady", "ramp", "spike", "soak"):
        raise SystemExit(f"LOAD_SHAPE={SHAPE!r}: choose steady, ramp, spike or soak")
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message("cg_records", lambda msg, **__: _gathered.extend(msg.data["records"]))
        environment.runner.register_message(
            "cg_exceptions", lambda msg, **__: _exceptions.update(msg.data["exceptions"])
        )


@events.test_stop.add_listener
def _send_to_master(environment: Any, **_: Any) -> None:
    """A worker hands its records to the master before it reports itself stopped (messages arrive in order)."""
    if isinstance(environment.runner, WorkerRunner):
        environment.runner.send_message("cg_records", {"records": list(_records)})
        environment.runner.send_message("cg_exceptions", {"exceptions": dict(_exceptions)})
        _records.clear()
        _exceptions.clear()


@events.quitting.add_listener
def _write_files(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    records = _gathered + _records
    if path := os.environ.get("LOAD_RECORDS_FILE"):
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    if not (path := os.environ.get("LOAD_STATUS_FILE")):  # locust run by hand
        return
    statuses: defaultdict[str, Counter[int]] = defaultdict(Counter)
    for r in records:
        statuses[r["name"]][r["status"]] += 1
    exceptions = sum(e["count"] for e in environment.runner.exceptions.values()) + sum(_exceptions.values())
    total = environment.stats.total  # the time span locust divides by for its req/s
    duration = (total.last_request_timestamp or total.start_time) - total.start_time
    with open(path, "w") as f:
        json.dump({"statuses": statuses, "exceptions": exceptions, "duration_s": duration, "paid": PAID}, f)
