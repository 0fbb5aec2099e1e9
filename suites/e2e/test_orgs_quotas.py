"""Orgs, quotas and the increment across two live gateway workers on Postgres + Redis."""

from __future__ import annotations

import httpx
import pytest

from creditgate.testing.gateway import GatewayFactory, TestUser, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Reply
from creditgate_harness.servers import LiveServer
from creditgate_harness.services import Service

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]
CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def two_workers(
    cg_live_server_factory: GatewayFactory, redis_service: Service, quota_redis: object
) -> list[LiveServer]:
    """Two separate gateway processes (two ports) sharing one Postgres and one Redis (quota counters emptied)."""
    env = {"CREDITGATE_REDIS_URL": redis_service.url, "CREDITGATE_DEFAULT_PLAN": "trial"}
    return [cg_live_server_factory(env=env), cg_live_server_factory(env=env)]


async def test_org_flow_quota_and_increment_across_workers(
    two_workers: list[LiveServer], cg_user_factory: UserFactory, cg_admin_user: TestUser, cg_upstream: FakeProvider
) -> None:
    a, b = (httpx.AsyncClient(base_url=s.url, timeout=30) for s in two_workers)
    owner, member, loner = await cg_user_factory(), await cg_user_factory(), await cg_user_factory(credits=1000)
    # Org: bought by admin grant, an invitation accepted (on the other worker), a member's request debits the org.
    org = (await a.post("/orgs", json={"name": "Acme"}, headers=owner.headers)).json()
    grant = {"org_id": org["id"], "amount": "10000", "idempotency_key": "acme-1"}
    assert (await b.post("/admin/credits", json=grant, headers=cg_admin_user.headers)).status_code == 200
    invited = await a.post(
        f"/orgs/{org['id']}/invitations", json={"email": member.email, "allocation": "2500"}, headers=owner.headers
    )
    accepted = await b.post(f"/user/invitations/{invited.json()['id']}/accept", headers=member.headers)
    assert accepted.status_code == 200, accepted.text
    cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=5750))
    body = {**BODY, "model": "gpt-4o", "max_tokens": 6000, "messages": [{"role": "user", "content": "w " * 2000}]}
    assert (await b.post(CHAT, json=body, headers=member.headers)).headers["X-Creditgate-Credits-Charged"] == "9.00"
    view = (await a.get(f"/orgs/{org['id']}", headers=owner.headers)).json()
    assert view["balance"] == "9991.00"
    assert next(m for m in view["members"] if m["user_id"] == member.id)["used"] == "9.00"
    # No allocation → 402 that says so; not a member → own credits.
    await a.put(f"/orgs/{org['id']}/members/{member.id}", json={"allocation": "0"}, headers=owner.headers)
    refused = await b.post(CHAT, json=BODY, headers=member.headers)
    assert (refused.status_code, refused.json()["error"]["reason"]) == (402, "no_allocation")
    assert (await a.post(CHAT, json=BODY, headers=loner.headers)).status_code == 200

    # The increment: changed through one worker, used by the other on its next request.
    await a.put("/admin/settings/credit-increment", json={"increment": "1.0"}, headers=cg_admin_user.headers)
    charged = (await b.post(CHAT, json=BODY, headers=loner.headers)).headers["X-Creditgate-Credits-Charged"]
    assert charged == "1.00"

    # The quota: one shared Redis counter, so two workers together allow exactly the plan's calls.
    sub = {"email": loner.email, "plan": "trial"}
    assert (await a.put("/admin/subscriptions", json=sub, headers=cg_admin_user.headers)).status_code == 200
    used = 2
    statuses = []
    for i in range(700 - used + 2):
        statuses.append((await (a if i % 2 else b).post(CHAT, json=BODY, headers=loner.headers)).status_code)
    assert statuses.count(200) == 700 - used
    assert statuses[-2:] == [429, 429]
    last = await a.post(CHAT, json=BODY, headers=loner.headers)
    assert int(last.headers["X-RateLimit-Limit"]) == 700
    assert int(last.headers["X-RateLimit-Reset"]) > 0
    await a.aclose()
    await b.aclose()
