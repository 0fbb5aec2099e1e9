"""The credit-flow guide, automated: individual user, org user, BYOK and the edge cases.

Live gateway workers (uvicorn subprocesses) on Postgres + Redis, the fake provider and fake Stripe on
real ports. Each flow records its steps and balances for the report (``--flow-report``, harness/report.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import pytest
import redis.asyncio as redis
from cryptography.fernet import Fernet

from creditgate.testing.gateway import GatewayFactory, TestUser, UserFactory, gateway_env, stripe_settings
from creditgate_harness.fakes.providers import FakeProvider, Reply
from creditgate_harness.fakes.stripe import StripeWebhooks
from creditgate_harness.fixtures.fakes import StripeFake
from creditgate_harness.report import Flow
from creditgate_harness.services import Service

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]
CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
TRIAL_CALLS = 700  # app/quotas/plans.json


@pytest.fixture
async def gateway(
    cg_live_server_factory: GatewayFactory, redis_service: Service, fake_stripe_server: StripeFake
) -> AsyncIterator[httpx.AsyncClient]:
    """Two gateway workers on one Postgres and one Redis, Stripe and BYOK configured, trial plan by default."""
    env = {
        **gateway_env(stripe_settings(fake_stripe_server)),
        "CREDITGATE_REDIS_URL": redis_service.url,
        "CREDITGATE_DEFAULT_PLAN": "trial",
        "CREDITGATE_BYOK_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    server = cg_live_server_factory(workers=2, env=env)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


async def balance(client: httpx.AsyncClient, user: TestUser) -> str:
    response = await client.get("/user/balance", headers=user.headers)
    assert response.status_code == 200, response.text
    return str(response.json()["balance"])


async def test_individual_user_tops_up_spends_and_meets_the_quota(
    cg_flow: Flow,
    gateway: httpx.AsyncClient,
    cg_user_factory: UserFactory,
    fake_stripe_server: StripeFake,
    cg_upstream: FakeProvider,
    quota_redis: redis.Redis,
    quota_key: Callable[[str], str],
) -> None:
    """Individual user: buys credits with Stripe, spends them, runs into the trial quota (429) and past its reset."""
    user = await cg_user_factory()
    with cg_flow.step("a new user on the trial plan has 0 credits and is refused with 402"):
        assert await balance(gateway, user) == "0.00"
        refused = await gateway.post(CHAT, json=BODY, headers=user.headers)
        assert (refused.status_code, refused.json()["error"]["reason"]) == (402, "insufficient_credits")
    with cg_flow.step("buys $10 through Stripe Checkout; the signed webhook, sent twice, credits 1,000 once"):

        async def deliver(payload: bytes, headers: dict[str, str]) -> httpx.Response:
            return await gateway.post("/billing/webhook", content=payload, headers=headers)

        hooks = StripeWebhooks(fake_stripe_server.state, deliver, secret=fake_stripe_server.webhook_secret)
        session = await gateway.post("/billing/checkout", json={"amount_usd": "10"}, headers=user.headers)
        assert session.status_code == 200, session.text
        fake_stripe_server.complete(session.json()["id"])
        outcomes = [r.json()["outcome"] for r in await hooks.deliver_pending(times=2)]
        assert outcomes == ["credited", "duplicate"]
        assert await balance(gateway, user) == "1000.00"
    cg_flow.balance("user after top-up", before="0.00", after="1000.00")
    key = quota_key(f"user:{user.id}")
    with cg_flow.step("a chat request is charged what the usage cost and counted as 1 call of the trial quota"):
        cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=90))
        response = await gateway.post(CHAT, json=BODY, headers=user.headers)
        assert response.status_code == 200, response.text
        charged = response.headers["X-Creditgate-Credits-Charged"]
        assert charged != "0.00"
        assert await quota_redis.get(key) == "1"  # the 402 before the top-up was not counted
        after_spend = await balance(gateway, user)
        assert float(after_spend) == pytest.approx(1000 - float(charged))
    cg_flow.balance("user after one request", before="1000.00", after=after_spend)
    with cg_flow.step(f"with {TRIAL_CALLS - 1} calls counted this month, one more is allowed, the next is 429"):
        await quota_redis.set(key, TRIAL_CALLS - 1, keepttl=True)  # as if 699 calls had already been made
        assert (await gateway.post(CHAT, json=BODY, headers=user.headers)).status_code == 200
        before_refusal = await balance(gateway, user)
        over = await gateway.post(CHAT, json=BODY, headers=user.headers)
        assert over.status_code == 429
        assert over.json()["error"]["type"] == "quota_exceeded"
        assert int(over.headers["X-RateLimit-Limit"]) == TRIAL_CALLS
        assert await balance(gateway, user) == before_refusal  # the refused call cost nothing
    with cg_flow.step("the counter expires at the period end the 429 names; after it, calls go through again"):
        reset = int(over.headers["X-RateLimit-Reset"])
        assert abs(await quota_redis.expiretime(key) - reset) <= 1
        assert datetime.fromtimestamp(reset, UTC).day == 1  # the first of next month
        await quota_redis.delete(key)  # what Redis does at that moment
        assert (await gateway.post(CHAT, json=BODY, headers=user.headers)).status_code == 200


async def test_org_user_spends_the_org_allocation_with_attribution(
    cg_flow: Flow, gateway: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser
) -> None:
    """Org user: the org buys credits, an admin allocates them, members' requests debit the org and are attributed."""
    owner, member = await cg_user_factory(), await cg_user_factory(credits=50)
    with cg_flow.step("the owner creates an org; credits are bought for it (admin grant, idempotent)"):
        org = (await gateway.post("/orgs", json={"name": "Acme"}, headers=owner.headers)).json()
        grant = {"org_id": org["id"], "amount": "100", "idempotency_key": f"acme-{org['id']}"}
        for _ in range(2):
            assert (await gateway.post("/admin/credits", json=grant, headers=cg_admin_user.headers)).status_code == 200
        assert (await gateway.get(f"/orgs/{org['id']}", headers=owner.headers)).json()["balance"] == "100.00"
    with cg_flow.step("the owner invites the member with an allocation of 300; the member accepts"):
        invited = await gateway.post(
            f"/orgs/{org['id']}/invitations", json={"email": member.email, "allocation": "300"}, headers=owner.headers
        )
        assert invited.status_code == 201, invited.text
        accepted = await gateway.post(f"/user/invitations/{invited.json()['id']}/accept", headers=member.headers)
        assert accepted.status_code == 200, accepted.text
    with cg_flow.step("the member's request debits the org, not their own 50 credits, and is attributed to them"):
        response = await gateway.post(CHAT, json=BODY, headers=member.headers)
        assert response.status_code == 200, response.text
        charged = response.headers["X-Creditgate-Credits-Charged"]
        view = (await gateway.get(f"/orgs/{org['id']}", headers=owner.headers)).json()
        assert float(view["balance"]) == pytest.approx(100 - float(charged))
        assert next(m for m in view["members"] if m["user_id"] == member.id)["used"] == charged
        usage = (await gateway.get("/user/usage", headers=member.headers)).json()["data"]
        assert [u["credits"] for u in usage] == [charged]
    cg_flow.balance("org", before="100.00", after=view["balance"])
    cg_flow.balance("member (own account, untouched)", before="50.00", after="50.00")
    with cg_flow.step("a member whose allocation is exhausted is refused with reason allocation_exhausted"):
        await gateway.put(f"/orgs/{org['id']}/members/{member.id}", json={"allocation": charged}, headers=owner.headers)
        refused = await gateway.post(CHAT, json=BODY, headers=member.headers)
        assert (refused.status_code, refused.json()["error"]["reason"]) == (402, "allocation_exhausted")
    with cg_flow.step("no allocation at all is refused with reason no_allocation"):
        await gateway.put(f"/orgs/{org['id']}/members/{member.id}", json={"allocation": "0"}, headers=owner.headers)
        refused = await gateway.post(CHAT, json=BODY, headers=member.headers)
        assert (refused.status_code, refused.json()["error"]["reason"]) == (402, "no_allocation")
    with cg_flow.step("an allocation larger than what the org has left: 402 org_insufficient_credits"):
        await gateway.put(
            f"/orgs/{org['id']}/members/{member.id}", json={"allocation": "100000"}, headers=owner.headers
        )
        big = {**BODY, "model": "claude-sonnet-4", "max_tokens": 64_000}  # may cost up to 144 credits
        refused = await gateway.post(CHAT, json=big, headers=member.headers)
        assert (refused.status_code, refused.json()["error"]["reason"]) == (402, "org_insufficient_credits")
    with cg_flow.step("removed from the org, the user falls back to their own credits"):
        assert (
            await gateway.delete(f"/orgs/{org['id']}/members/{member.id}", headers=owner.headers)
        ).status_code == 204
        response = await gateway.post(CHAT, json=BODY, headers=member.headers)
        assert response.status_code == 200, response.text
        own = await balance(gateway, member)
        assert float(own) == pytest.approx(50 - float(response.headers["X-Creditgate-Credits-Charged"]))
    cg_flow.balance("member (own account, after leaving)", before="50.00", after=own)


async def test_byok_costs_nothing_but_counts_against_the_quota(
    cg_flow: Flow,
    gateway: httpx.AsyncClient,
    cg_user_factory: UserFactory,
    cg_upstream: FakeProvider,
    quota_redis: redis.Redis,
    quota_key: Callable[[str], str],
) -> None:
    """BYOK: a user with 0 credits and their own provider key is served at 0 credits; the call still counts."""
    user = await cg_user_factory()
    with cg_flow.step("a user with 0 credits stores their own key for the provider"):
        stored = await gateway.post(
            "/user/provider-keys", json={"provider": "fake", "api_key": "sk-own-e2e-9876"}, headers=user.headers
        )
        assert stored.status_code == 200, stored.text
    with cg_flow.step("their request is sent upstream with their key and charged 0.00"):
        cg_upstream.push(Reply(prompt_tokens=2000, completion_tokens=80))
        response = await gateway.post(CHAT, json=BODY, headers=user.headers)
        assert response.status_code == 200, response.text
        assert response.headers["X-Creditgate-Credits-Charged"] == "0.00"
        assert cg_upstream.calls[-1].headers["authorization"] == "Bearer sk-own-e2e-9876"
        assert await balance(gateway, user) == "0.00"
    with cg_flow.step("the call is counted against the trial quota and recorded as BYOK usage"):
        assert int(await quota_redis.get(quota_key(f"user:{user.id}")) or 0) == 1
        usage = (await gateway.get("/user/usage", headers=user.headers)).json()["data"][0]
        assert (usage["byok"], usage["credits"], usage["completion_tokens"]) == (True, "0.00", 80)
    cg_flow.balance("BYOK user", before="0.00", after="0.00")


async def test_ten_simultaneous_100_credit_requests_on_1000_leave_exactly_0(
    cg_flow: Flow, gateway: httpx.AsyncClient, cg_user_factory: UserFactory, cg_upstream: FakeProvider
) -> None:
    """Ten simultaneous requests each costing 100 credits on a 1,000 balance, over two workers: exactly 0 left."""
    user = await cg_user_factory(credits=1000)
    # claude-sonnet-4: $0.015 / 1k output tokens × margin 1.5 / $0.01 a credit → 44,440 tokens = 99.99 credits,
    # plus the prompt estimate, rounded up to the 0.1 increment: each request holds and is charged 100.00.
    body = {**BODY, "model": "claude-sonnet-4", "max_tokens": 44_440, "messages": [{"role": "user", "content": "x"}]}
    cg_upstream.default = Reply(prompt_tokens=8, completion_tokens=44_440)
    with cg_flow.step("ten requests at once, each holding and then being charged 100 credits"):
        responses = await asyncio.gather(*(gateway.post(CHAT, json=body, headers=user.headers) for _ in range(10)))
        assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses if r.status_code != 200]
        assert {r.headers["X-Creditgate-Credits-Charged"] for r in responses} == {"100.00"}
    with cg_flow.step("the balance is exactly 0.00 and the eleventh request is refused (402)"):
        assert await balance(gateway, user) == "0.00"
        assert (await gateway.post(CHAT, json=body, headers=user.headers)).status_code == 402
    with cg_flow.step("the ledger shows ten charges of 100, no double charge"):
        summary = (await gateway.get("/user/transactions/summary", headers=user.headers)).json()
        assert (summary["total_spent"], summary["net_balance"]) == ("1000.00", "0.00")
    cg_flow.balance("user", before="1000.00", after="0.00")
