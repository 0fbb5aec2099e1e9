"""Identity and integrations end to end: a Keycloak user signs in, tops up, is notified, spends; Lago changes the quota.

Two live gateway workers on Postgres + Redis; the fake Keycloak issuer, fake Stripe, fake provider and the
notification receiver each on a real port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import redis.asyncio as redis

from creditgate.testing.gateway import GatewayFactory, gateway_env, stripe_settings
from creditgate_harness.fakes.modes import Fake
from creditgate_harness.fakes.oidc import FakeOidcIssuer
from creditgate_harness.fakes.receiver import NotificationReceiver
from creditgate_harness.fakes.signers import LAGO_HMAC_KEY, lago_webhook
from creditgate_harness.fakes.stripe import StripeWebhooks
from creditgate_harness.fixtures.fakes import StripeFake
from creditgate_harness.report import Flow
from creditgate_harness.services import Service
from creditgate_harness.wait import until

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]
CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def gateway(
    cg_live_server_factory: GatewayFactory,
    redis_service: Service,
    fake_stripe_server: StripeFake,
    fake_oidc: Fake[FakeOidcIssuer],
    notification_receiver: Fake[NotificationReceiver],
    quota_redis: redis.Redis,
) -> AsyncIterator[httpx.AsyncClient]:
    receiver, url = notification_receiver.state, notification_receiver.url
    env = {
        **gateway_env(stripe_settings(fake_stripe_server)),
        "CREDITGATE_REDIS_URL": redis_service.url,
        "CREDITGATE_DEFAULT_PLAN": "trial",
        "CREDITGATE_OIDC_ISSUER": fake_oidc.state.issuer,
        "CREDITGATE_OIDC_AUDIENCE": fake_oidc.state.client_id,
        "CREDITGATE_LAGO_HMAC_KEY": LAGO_HMAC_KEY,
        "CREDITGATE_NOTIFY_WEBHOOK_URL": url,
        "CREDITGATE_NOTIFY_WEBHOOK_SECRET": receiver.secret,
        "CREDITGATE_NOTIFY_POLL_SECONDS": "0.1",
    }
    server = cg_live_server_factory(workers=2, env=env)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


async def test_keycloak_user_signs_in_tops_up_is_notified_spends_and_lago_changes_the_quota(
    cg_flow: Flow,
    gateway: httpx.AsyncClient,
    fake_oidc: Fake[FakeOidcIssuer],
    fake_stripe_server: StripeFake,
    notification_receiver: Fake[NotificationReceiver],
    quota_redis: redis.Redis,
    quota_key: Callable[[str], str],
) -> None:
    """Keycloak sign-in → Stripe top-up → signed notification → spend with the JWT → Lago lifts the quota."""
    receiver, _ = notification_receiver.state, notification_receiver.url
    kc_user = fake_oidc.state.add_user("kate", email="kate@example.test", password="pw-kate")
    with cg_flow.step("kate gets an access token from Keycloak (password grant) and is provisioned on first use"):
        async with httpx.AsyncClient() as http:
            form = {
                "grant_type": "password",
                "client_id": fake_oidc.state.client_id,
                "client_secret": fake_oidc.state.client_secret,
                "username": "kate",
                "password": "pw-kate",
            }
            token = (await http.post(f"{fake_oidc.state.issuer}/protocol/openid-connect/token", data=form)).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        first = await gateway.get("/user/balance", headers=headers)
        assert (first.status_code, first.json()["balance"]) == (200, "0.00")
    with cg_flow.step("she buys $5 through Stripe; the webhook credits 500 and writes a payment notification"):

        async def deliver(payload: bytes, hook_headers: dict[str, str]) -> httpx.Response:
            return await gateway.post("/billing/webhook", content=payload, headers=hook_headers)

        hooks = StripeWebhooks(fake_stripe_server.state, deliver, secret=fake_stripe_server.webhook_secret)
        session = await gateway.post("/billing/checkout", json={"amount_usd": "5"}, headers=headers)
        assert session.status_code == 200, session.text
        fake_stripe_server.complete(session.json()["id"])
        assert [r.json()["outcome"] for r in await hooks.deliver_pending()] == ["credited"]
        assert (await gateway.get("/user/balance", headers=headers)).json()["balance"] == "500.00"
    cg_flow.balance("kate (Keycloak user)", before="0.00", after="500.00")
    with cg_flow.step("the receiver gets payment_received, signed, under the id /user/notifications shows"):
        await until(lambda: any(n["type"] == "payment_received" for n in receiver.received), seconds=15)
        listed = (await gateway.get("/user/notifications", headers=headers)).json()["data"]
        payment = next(n for n in listed if n["type"] == "payment_received")
        assert payment["data"]["credits"] == "500.00"
        assert payment["id"] in receiver.unique
        assert receiver.rejected_signatures == 0
    with cg_flow.step("she spends credits with the same JWT"):
        spent = await gateway.post(CHAT, json=BODY, headers=headers)
        assert spent.status_code == 200, spent.text
        after = (await gateway.get("/user/balance", headers=headers)).json()["balance"]
        assert float(after) == pytest.approx(500 - float(spent.headers["X-Creditgate-Credits-Charged"]))
    cg_flow.balance("kate after one request", before="500.00", after=after)
    user_id = receiver.unique[payment["id"]]["user_id"]
    key = quota_key(f"user:{user_id}")
    with cg_flow.step("on the trial plan (700 calls), the 701st call of the month is refused with 429"):
        await quota_redis.set(key, 700, keepttl=True)  # as if the month's 700 calls were made
        refused = await gateway.post(CHAT, json=BODY, headers=headers)
        assert (refused.status_code, refused.headers["X-RateLimit-Limit"]) == (429, "700")
    with cg_flow.step("a signed Lago subscription.started moves her to professional; the next call goes through"):
        subscription = {"external_customer_id": kc_user.email, "plan_code": "professional", "status": "active"}
        raw, lago_headers = lago_webhook("subscription.started", subscription, hmac_key=LAGO_HMAC_KEY)
        applied = await gateway.post("/integrations/lago/webhook", content=raw, headers=lago_headers)
        assert applied.json()["outcome"] == "plan professional"
        assert (await gateway.post(CHAT, json=BODY, headers=headers)).status_code == 200
