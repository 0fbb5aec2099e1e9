"""Stripe top-up end to end: a live gateway (2 workers, Postgres), the fake Stripe on a port, signed webhooks."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from creditgate.testing.gateway import GatewayFactory, UserFactory, gateway_env, stripe_settings
from creditgate_harness.fakes.stripe import StripeWebhooks
from creditgate_harness.fixtures.fakes import StripeFake

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]


async def test_checkout_to_credits_with_duplicates_shuffled_refund_after_spend(
    cg_live_server_factory: GatewayFactory, cg_user_factory: UserFactory, fake_stripe_server: StripeFake
) -> None:
    server = cg_live_server_factory(workers=2, env=gateway_env(stripe_settings(fake_stripe_server)))
    users = [await cg_user_factory() for _ in range(3)]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

        async def deliver(payload: bytes, headers: dict[str, str]) -> httpx.Response:
            return await client.post("/billing/webhook", content=payload, headers=headers)

        hooks = StripeWebhooks(fake_stripe_server.state, deliver, secret=fake_stripe_server.webhook_secret)
        sessions = []
        for user, usd in zip(users, ("10", "20", "30"), strict=True):
            response = await client.post("/billing/checkout", json={"amount_usd": usd}, headers=user.headers)
            assert response.status_code == 200, response.text
            sessions.append(response.json()["id"])
            fake_stripe_server.complete(response.json()["id"])
        # Each event 3×, shuffled, sent concurrently so the two workers race on the same payment.
        batch = [e for e in hooks.pending() for _ in range(3)]
        hooks._sent = len(fake_stripe_server.state.events)
        random.Random(1).shuffle(batch)
        results = await asyncio.gather(*(hooks.send(e) for e in batch))
        assert {r.status_code for r in results} == {200}
        assert sorted(r.json()["outcome"] for r in results).count("credited") == 3
        balances = [(await client.get("/user/balance", headers=u.headers)).json()["balance"] for u in users]
        assert balances == ["1000.00", "2000.00", "3000.00"]

        # The first user spends some credits, then the payment is refunded in full.
        spend = {"model": "test-model", "max_tokens": 50_000, "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=spend, headers=users[0].headers)).status_code == 200
        intent = fake_stripe_server.state.get(sessions[0])["payment_intent"]
        fake_stripe_server.state.create_refund({"payment_intent": intent})
        refund_results = await hooks.deliver_pending(times=2)
        assert [r.json()["outcome"] for r in refund_results] == [
            "partially reversed (credits already spent)",
            "duplicate",
        ]
        assert (await client.get("/user/balance", headers=users[0].headers)).json()["balance"] == "0.00"
