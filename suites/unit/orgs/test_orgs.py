"""app/orgs: members spend the org's credits within their allocation; every refusal says which limit."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import pytest

from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Reply

CHAT = "/v1/chat/completions"


def chat(max_tokens: int = 1000) -> dict[str, object]:
    return {"model": "test-model", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}


async def make_org(client: httpx.AsyncClient, owner: TestUser, admin: TestUser, credits: str) -> int:
    org = (await client.post("/orgs", json={"name": "Acme"}, headers=owner.headers)).json()
    grant = {"org_id": org["id"], "amount": credits, "idempotency_key": f"org-{org['id']}"}
    assert (await client.post("/admin/credits", json=grant, headers=admin.headers)).status_code == 200
    return int(org["id"])


async def join(
    client: httpx.AsyncClient, org_id: int, inviter: TestUser, member: TestUser, allocation: str, role: str = "member"
) -> httpx.Response:
    """``inviter`` invites ``member`` with ``allocation``; ``member`` accepts. Returns the acceptance (the org)."""
    body = {"email": member.email, "allocation": allocation, "role": role}
    invited = await client.post(f"/orgs/{org_id}/invitations", json=body, headers=inviter.headers)
    assert invited.status_code == 201, invited.text
    accepted = await client.post(f"/user/invitations/{invited.json()['id']}/accept", headers=member.headers)
    assert accepted.status_code == 200, accepted.text
    return accepted


@pytest.mark.critical
async def test_member_spends_org_credits_within_allocation(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser, cg_upstream: FakeProvider
) -> None:
    owner, member = await cg_user_factory(credits=50), await cg_user_factory(credits=50)
    org_id = await make_org(async_client, owner, cg_admin_user, "10000")
    await join(async_client, org_id, owner, member, "2500")
    # 9 credits: gpt-4o, 1,000 prompt + 5,750 completion tokens ($0.0025 / $0.01 per 1K) = $0.06 × 1.5.
    cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=5750))
    response = await async_client.post(
        CHAT,
        json=chat(max_tokens=6000) | {"model": "gpt-4o", "messages": [{"role": "user", "content": "w " * 2000}]},
        headers=member.headers,
    )
    assert response.headers["X-Creditgate-Credits-Charged"] == "9.00"
    org = (await async_client.get(f"/orgs/{org_id}", headers=member.headers)).json()
    assert org["balance"] == "9991.00"
    assert org["allocated"] == "2500.00"
    seat = next(m for m in org["members"] if m["email"] == member.email)
    assert (seat["allocation"], seat["used"]) == ("2500.00", "9.00")
    # Their own credits are untouched; the usage is theirs.
    assert (await async_client.get("/user/balance", headers=member.headers)).json()["balance"] == "50.00"
    assert (await async_client.get("/user/usage", headers=member.headers)).json()["data"][0]["credits"] == "9.00"


@pytest.mark.parametrize(
    ("allocation", "org_credits", "reason", "phrase"),
    [
        ("0", "10000", "no_allocation", "no credit allocation"),
        ("0.10", "10000", "allocation_exhausted", "allocation is exhausted"),
        ("2500", "0.20", "org_insufficient_credits", "organization has"),
    ],
)
async def test_refusals_say_which_limit(
    async_client: httpx.AsyncClient,
    cg_user_factory: UserFactory,
    cg_admin_user: TestUser,
    allocation: str,
    org_credits: str,
    reason: str,
    phrase: str,
) -> None:
    owner, member = await cg_user_factory(), await cg_user_factory(credits=1000)
    org_id = await make_org(async_client, owner, cg_admin_user, org_credits)
    await join(async_client, org_id, owner, member, allocation)
    response = await async_client.post(CHAT, json=chat(), headers=member.headers)
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["reason"] == reason
    assert phrase in error["message"]
    # Short of credits, the answer says how many tokens would fit; short of an allocation, the limit is the seat's.
    assert ("max_affordable_tokens" in error) is (reason == "org_insufficient_credits")


async def test_leaving_the_org_falls_back_to_own_credits(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser
) -> None:
    owner, member = await cg_user_factory(), await cg_user_factory(credits=100)
    org_id = await make_org(async_client, owner, cg_admin_user, "100")
    await join(async_client, org_id, owner, member, "0")
    assert (await async_client.post(CHAT, json=chat(), headers=member.headers)).status_code == 402
    assert (await async_client.delete(f"/orgs/{org_id}/members/{member.id}", headers=owner.headers)).status_code == 204
    assert (await async_client.post(CHAT, json=chat(), headers=member.headers)).status_code == 200
    assert (await async_client.get("/user/balance", headers=member.headers)).json()["balance"] != "100.00"
    # Invited back, they may leave on their own too.
    await join(async_client, org_id, owner, member, "0")
    assert (await async_client.post(CHAT, json=chat(), headers=member.headers)).status_code == 402
    assert (await async_client.delete(f"/orgs/{org_id}/members/me", headers=member.headers)).status_code == 204
    assert (await async_client.post(CHAT, json=chat(), headers=member.headers)).status_code == 200


async def test_roles(async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser) -> None:
    owner, member, outsider = await cg_user_factory(), await cg_user_factory(), await cg_user_factory()
    org_id = await make_org(async_client, owner, cg_admin_user, "10")
    await join(async_client, org_id, owner, member, "1")
    as_member = await async_client.put(
        f"/orgs/{org_id}/members/{member.id}", json={"allocation": "5"}, headers=member.headers
    )
    assert as_member.status_code == 403
    assert (await async_client.get(f"/orgs/{org_id}", headers=outsider.headers)).status_code == 403
    assert (await async_client.get("/orgs/999", headers=owner.headers)).status_code == 404
    as_member = await async_client.post(
        f"/orgs/{org_id}/invitations", json={"email": outsider.email, "allocation": "1"}, headers=member.headers
    )
    assert as_member.status_code == 403
    again = await async_client.post(
        f"/orgs/{org_id}/invitations", json={"email": member.email, "allocation": "1"}, headers=owner.headers
    )
    assert again.status_code == 201  # the inviter cannot tell; the member hears it when accepting
    dup = await async_client.post(f"/user/invitations/{again.json()['id']}/accept", headers=member.headers)
    assert dup.status_code == 409
    ok = await async_client.put(f"/orgs/{org_id}/members/{member.id}", json={"allocation": "5"}, headers=owner.headers)
    assert next(m for m in ok.json()["members"] if m["user_id"] == member.id)["allocation"] == "5.00"
    bad = await async_client.put(
        f"/orgs/{org_id}/members/{member.id}", json={"allocation": "-1"}, headers=owner.headers
    )
    assert bad.status_code == 422


@pytest.mark.critical
@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize(("org_credits", "served"), [("2.80", 7), ("100", 10)], ids=["org-binds", "allocations-bind"])
async def test_concurrent_members_cannot_overdraw_org_or_allocation(
    async_client: httpx.AsyncClient,
    cg_user_factory: UserFactory,
    cg_admin_user: TestUser,
    cg_upstream: FakeProvider,
    org_credits: str,
    served: int,
) -> None:
    """20 simultaneous requests (0.40 held each) from 5 members with 0.80 allocations each."""
    owner = await cg_user_factory()
    members = [await cg_user_factory() for _ in range(5)]
    org_id = await make_org(async_client, owner, cg_admin_user, org_credits)
    for m in members:
        await join(async_client, org_id, owner, m, "0.80")
    cg_upstream.gate = asyncio.Event()
    tasks = [
        asyncio.create_task(async_client.post(CHAT, json=chat(), headers=m.headers)) for m in members for _ in range(4)
    ]
    while len(cg_upstream.calls) < served or sum(t.done() for t in tasks) < 20 - served:
        await asyncio.sleep(0.01)
    cg_upstream.gate.set()
    statuses = sorted(r.status_code for r in await asyncio.gather(*tasks))
    assert statuses == [200] * served + [402] * (20 - served)
    org = (await async_client.get(f"/orgs/{org_id}", headers=owner.headers)).json()
    seats = [m for m in org["members"] if m["role"] == "member"]
    assert all(Decimal(m["used"]) <= Decimal("0.80") for m in seats)
    assert Decimal(org["balance"]) == Decimal(org_credits) - sum(Decimal(m["used"]) for m in seats)


@pytest.mark.critical
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_one_members_overlapping_requests_never_deadlock(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser, cg_upstream: FakeProvider
) -> None:
    """Holds and settles of one member interleave: both lock the allocation before the org's balance.

    Before, a settle locked the balance first and Postgres broke the cycle by failing one request with a 500
    (found by the chaos load run).
    """
    owner, member = await cg_user_factory(), await cg_user_factory()
    org_id = await make_org(async_client, owner, cg_admin_user, "10000")
    await join(async_client, org_id, owner, member, "1000")
    cg_upstream.default = Reply(prompt_tokens=10, completion_tokens=10)
    for _ in range(3):
        responses = await asyncio.gather(
            *(async_client.post(CHAT, json=chat(max_tokens=50), headers=member.headers) for _ in range(30))
        )
        assert [r.status_code for r in responses] == [200] * 30, {r.status_code: r.text for r in responses}
