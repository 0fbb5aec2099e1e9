"""Random Stripe event sequences — duplicates, any order, refunds, disputes — with the auditor as invariant.

The model: a payment contributes its credits once its completion is delivered, minus
ceil(credits × min(amount, max refunded + max disputed) / amount) for what was delivered about it.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from creditgate.auth import service as auth
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.main import create_app
from creditgate.settings import Settings
from creditgate.testing.auditor import audit
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import migrate
from creditgate_harness.fakes.stripe import FakeStripe, StripeWebhooks
from creditgate_harness.servers import ThreadedServer

pytestmark = pytest.mark.critical
SEQUENCES: list[int] = []


@functools.cache
def _template() -> Path:
    path = Path(tempfile.mkdtemp()) / "template.db"
    migrate(f"sqlite+aiosqlite:///{path}")
    return path


class _CurrentStripe:
    """One fake Stripe server for every sequence, answering as that sequence's own ``FakeStripe`` (a server per
    sequence cost ~0.25 s of start and stop each)."""

    fake: FakeStripe | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert self.fake is not None, "no sequence is running"
        await self.fake.app(scope, receive, send)


_STRIPE = _CurrentStripe()


@functools.cache
def _stripe_server() -> ThreadedServer:
    return ThreadedServer(_STRIPE).start()  # a daemon thread: it ends with the test process


@functools.cache
def _gateway() -> tuple[FastAPI, Path]:
    """One app for every sequence, on one database file that each sequence fills afresh from the template before it
    starts the app's lifespan (engine, caches, clients: all a request touches). An app per sequence cost ~0.3 s of CPU
    under coverage, most of it FastAPI preparing each route on the app's first request to it."""
    path = Path(tempfile.mkdtemp()) / "billing.db"
    app = create_app(
        Settings(
            _env_file=None,
            database_url=f"sqlite+aiosqlite:///{path}",
            stripe_secret_key="sk_test_sm",
            stripe_webhook_secret="whsec_sm",
            stripe_api_base=_stripe_server().url,
            sweep_interval_seconds=3600,
        ),
        catalog=catalog_for_tests(),
    )
    return app, path


class BillingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        SEQUENCES.append(1)
        self.loop = asyncio.new_event_loop()
        app, path = _gateway()
        for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)  # SQLite would replay a stale WAL onto the fresh copy
        shutil.copyfile(_template(), path)
        self.url = f"sqlite+aiosqlite:///{path}"
        self.fake = _STRIPE.fake = FakeStripe(api_key="sk_test_sm")
        # The app's own lifespan, entered and left across steps (each step is its own task).
        self.lifespan = app.router.lifespan_context(app)
        self.run(self.lifespan.__aenter__())
        self.engine = app.state.runtime.engine  # the auditor reads through the gateway's own engine
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
        self.hooks = StripeWebhooks(self.fake, self._deliver, secret="whsec_sm")
        self.headers = self.run(self._user())
        self.payments: list[dict[str, Any]] = []  # session id, intent, cents, credits, delivered state
        self.events: list[dict[str, Any]] = []

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _user(self) -> dict[str, str]:
        engine = create_engine(self.url)
        async with create_sessionmaker(engine)() as s, s.begin():
            user, _ = await auth.create_user(s, email="sm@example.test")
            key = await auth.issue_key(s, user_id=user.id)
        await engine.dispose()
        return {"Authorization": f"Bearer {key}"}

    async def _deliver(self, payload: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.client.post("/billing/webhook", content=payload, headers=headers)

    def _collect(self) -> None:
        self.events.extend(self.hooks.pending())
        self.hooks._sent = len(self.fake.events)

    @rule(cents=st.integers(100, 50_000))
    def pay(self, cents: int) -> None:
        response = self.run(
            self.client.post(
                "/billing/checkout", json={"amount_usd": f"{Decimal(cents) / 100:.2f}"}, headers=self.headers
            )
        )
        assert response.status_code == 200, response.text
        self.fake.complete_checkout_session(response.json()["id"])
        intent = self.fake.get(response.json()["id"])["payment_intent"]
        self.payments.append(
            {
                "session": response.json()["id"],
                "intent": intent,
                "cents": cents,
                "credits": cents,
                "completed": False,
                "refunded": 0,
                "disputed": 0,
            }
        )
        self._collect()

    @precondition(lambda self: self.payments)
    @rule(data=st.data(), fraction=st.sampled_from([Decimal("0.1"), Decimal("0.5"), Decimal(1)]))
    def refund(self, data: st.DataObject, fraction: Decimal) -> None:
        payment = data.draw(st.sampled_from(self.payments))
        charge = self.fake.get(self.fake.get(payment["intent"])["latest_charge"])
        remaining = charge["amount"] - charge["amount_refunded"] - (charge["amount"] if charge["disputed"] else 0)
        amount = int(remaining * fraction)
        if amount > 0:
            self.fake.create_refund({"payment_intent": payment["intent"], "amount": str(amount)})
            self._collect()

    @precondition(lambda self: self.payments)
    @rule(data=st.data())
    def dispute(self, data: st.DataObject) -> None:
        payment = data.draw(st.sampled_from(self.payments))
        charge = self.fake.get(self.fake.get(payment["intent"])["latest_charge"])
        if not charge["disputed"] and charge["amount_refunded"] < charge["amount"]:
            self.fake.create_dispute(
                {"charge": charge["id"], "amount": str(charge["amount"] - charge["amount_refunded"])}
            )
            self._collect()

    @precondition(lambda self: self.events)
    @rule(data=st.data(), times=st.integers(1, 3))
    def deliver(self, data: st.DataObject, times: int) -> None:
        event = data.draw(st.sampled_from(self.events))
        for _ in range(times):
            assert self.run(self.hooks.send(event)).status_code == 200
        obj = event["data"]["object"]
        for payment in self.payments:
            if event["type"] == "checkout.session.completed" and obj["id"] == payment["session"]:
                payment["completed"] = True
            elif event["type"] == "charge.refunded" and obj["payment_intent"] == payment["intent"]:
                payment["refunded"] = max(payment["refunded"], obj["amount_refunded"])
            elif event["type"] == "charge.dispute.created" and obj["payment_intent"] == payment["intent"]:
                payment["disputed"] = max(payment["disputed"], obj["amount"])

    def expected(self) -> Decimal:
        total = Decimal(0)
        for p in self.payments:
            if p["completed"]:
                taken = min(p["cents"], p["refunded"] + p["disputed"])
                reversed_ = (Decimal(p["credits"] * 100) * taken / p["cents"]).to_integral_value(ROUND_CEILING)
                total += (Decimal(p["credits"] * 100) - reversed_) / 100
        return total.quantize(Decimal("0.01"))

    @invariant()
    def balance_is_the_model_and_the_ledger_balances(self) -> None:
        balance = self.run(self.client.get("/user/balance", headers=self.headers)).json()["balance"]
        assert Decimal(balance) == self.expected()

        report = self.run(audit(self.engine))
        assert report.ok, str(report)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.run(self.lifespan.__aexit__(None, None, None))
        _STRIPE.fake = None
        self.loop.close()


BillingMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=20, deadline=None)
test_billing_event_sequences = BillingMachine.TestCase


def test_report_sequence_count() -> None:
    print(f"\nbilling state machine ran {len(SEQUENCES)} event sequences")
