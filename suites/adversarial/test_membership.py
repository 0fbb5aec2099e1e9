"""Class 4, membership needs consent (issue 26, F1 and F9).

F1: any user could create an org and add anyone by email: the victim was seated at once with allocation 0, so their
own balance froze (402 ``no_allocation``), and the 404/409/201 answers told the attacker which emails have an account.
Now joining is an invitation the invitee accepts; until then nothing about who pays for their requests changes; they
may decline, and a member may leave. The inviter gets one answer for every email.

F9: removing a member while their requests are in flight answered 500s (the in-flight holds reference the seat; a
stale cached identity of the removed seat). Now a removal is a clean 409 (retry) or clean, and the member's
requests never get a 5xx, before, during or after it.
"""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal

import httpx
import pytest

from creditgate.testing.gateway import GatewayFactory, TestUser, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Reply

CHAT = "/v1/chat/completions"


def chat(max_tokens: int = 50) -> dict[str, object]:
    return {"model": "test-model", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}


async def make_org(client: httpx.AsyncClient, owner: TestUser, admin: TestUser, credits: str) -> int:
    created = await client.post("/orgs", json={"name": "Acme"}, headers=owner.headers)
    assert created.status_code == 201, created.text
    org_id = int(created.json()["id"])
    grant = {"org_id": org_id, "amount": credits, "idempotency_key": f"org-{org_id}"}
    assert (await client.post("/admin/credits", json=grant, headers=admin.headers)).status_code == 200
    return org_id


async def invite(
    client: httpx.AsyncClient, org_id: int, inviter: TestUser, email: str, allocation: str = "0"
) -> httpx.Response:
    return await client.post(
        f"/orgs/{org_id}/invitations", json={"email": email, "allocation": allocation}, headers=inviter.headers
    )


async def join(client: httpx.AsyncClient, org_id: int, owner: TestUser, member: TestUser, allocation: str) -> None:
    """Invite ``member`` and accept as them."""
    invited = await invite(client, org_id, owner, member.email, allocation)
    assert invited.status_code == 201, invited.text
    accepted = await client.post(f"/user/invitations/{invited.json()['id']}/accept", headers=member.headers)
    assert accepted.status_code == 200, accepted.text


async def own_balance(client: httpx.AsyncClient, user: TestUser) -> Decimal:
    return Decimal((await client.get("/user/balance", headers=user.headers)).json()["balance"])


async def served_from_own_account(client: httpx.AsyncClient, user: TestUser) -> None:
    """One request, answered 200 and charged to ``user``'s own balance."""
    before = await own_balance(client, user)
    response = await client.post(CHAT, json=chat(), headers=user.headers)
    assert response.status_code == 200, response.text
    charged = Decimal(response.headers["X-Creditgate-Credits-Charged"])
    assert charged > 0
    assert await own_balance(client, user) == before - charged


# -- F1: forced membership -----------------------------------------------------------------------------------------
async def test_an_attackers_org_cannot_seat_a_victim_without_consent(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser
) -> None:
    attacker, victim = await cg_user_factory(), await cg_user_factory(credits=100)
    await served_from_own_account(async_client, victim)
    org_id = await make_org(async_client, attacker, cg_admin_user, "1000")
    seat = {"email": victim.email, "allocation": "0"}
    for path in ("members", "invitations"):  # the old direct route, and the invitation
        await async_client.post(f"/orgs/{org_id}/{path}", json=seat, headers=attacker.headers)

    # Nothing changed for the victim: their own account pays, they are no member, they may still found an org.
    await served_from_own_account(async_client, victim)
    assert (await async_client.get(f"/orgs/{org_id}", headers=victim.headers)).status_code == 403
    view = (await async_client.get(f"/orgs/{org_id}", headers=attacker.headers)).json()
    assert [m["user_id"] for m in view["members"]] == [attacker.id]

    # They see the invitation, and decline it; it is gone, and cannot be accepted afterwards.
    pending = (await async_client.get("/user/invitations", headers=victim.headers)).json()["data"]
    assert [(i["org_id"], i["org_name"], i["allocation"], i["invited_by"]) for i in pending] == [
        (org_id, "Acme", "0.00", attacker.email)
    ]
    declined = await async_client.post(f"/user/invitations/{pending[0]['id']}/decline", headers=victim.headers)
    assert declined.status_code == 204
    assert (await async_client.get("/user/invitations", headers=victim.headers)).json()["data"] == []
    late = await async_client.post(f"/user/invitations/{pending[0]['id']}/accept", headers=victim.headers)
    assert late.status_code == 404
    await served_from_own_account(async_client, victim)
    assert (await async_client.post("/orgs", json={"name": "Mine"}, headers=victim.headers)).status_code == 201


async def test_an_invitee_joins_by_accepting_and_leaves_on_their_own(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser
) -> None:
    owner, member, outsider = (await cg_user_factory(), await cg_user_factory(credits=100), await cg_user_factory())
    org_id = await make_org(async_client, owner, cg_admin_user, "1000")
    invited = await invite(async_client, org_id, owner, member.email, "50")
    assert invited.status_code == 201, invited.text
    invitation = invited.json()["id"]
    await served_from_own_account(async_client, member)  # invited is not joined

    # Only the addressee can answer an invitation: to anyone else it does not exist.
    for action in ("accept", "decline"):
        stolen = await async_client.post(f"/user/invitations/{invitation}/{action}", headers=outsider.headers)
        assert stolen.status_code == 404, stolen.text
    assert (await async_client.get(f"/orgs/{org_id}", headers=outsider.headers)).status_code == 403

    accepted = await async_client.post(f"/user/invitations/{invitation}/accept", headers=member.headers)
    assert accepted.status_code == 200, accepted.text
    assert member.id in [m["user_id"] for m in accepted.json()["members"]]
    before = await own_balance(async_client, member)
    paid_by_org = await async_client.post(CHAT, json=chat(), headers=member.headers)
    assert paid_by_org.status_code == 200
    assert await own_balance(async_client, member) == before  # the org paid, from the next request on
    view = (await async_client.get(f"/orgs/{org_id}", headers=owner.headers)).json()
    charged = paid_by_org.headers["X-Creditgate-Credits-Charged"]
    assert Decimal(view["balance"]) == Decimal(1000) - Decimal(charged)
    assert [(m["allocation"], m["used"]) for m in view["members"] if m["user_id"] == member.id] == [("50.00", charged)]

    left = await async_client.delete(f"/orgs/{org_id}/members/me", headers=member.headers)
    assert left.status_code == 204, left.text
    await served_from_own_account(async_client, member)
    assert (await async_client.get(f"/orgs/{org_id}", headers=member.headers)).status_code == 403
    after = (await async_client.get(f"/orgs/{org_id}", headers=owner.headers)).json()
    assert after["balance"] == view["balance"]  # leaving moves no credit: what was spent stays spent
    assert [m["user_id"] for m in after["members"]] == [owner.id]
    assert (await async_client.post("/orgs", json={"name": "Mine"}, headers=member.headers)).status_code == 201


# -- F1: enumeration -----------------------------------------------------------------------------------------------
async def test_the_inviters_answers_do_not_tell_who_has_an_account(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser
) -> None:
    attacker, free, elsewhere_owner = await cg_user_factory(), await cg_user_factory(), await cg_user_factory()
    org_id = await make_org(async_client, attacker, cg_admin_user, "10")
    await make_org(async_client, elsewhere_owner, cg_admin_user, "10")
    ghost = "nobody-yet@example.test"
    emails = {"an existing user": free.email, "no user": ghost, "a member elsewhere": elsewhere_owner.email}

    def shape(response: httpx.Response) -> tuple[object, ...]:
        body = response.json()
        error = body.get("error", {}) if isinstance(body, dict) else {}
        return response.status_code, tuple(sorted(body)), tuple(sorted(error)), error.get("reason"), error.get("code")

    for path in ("members", "invitations"):
        answers = {
            who: await async_client.post(
                f"/orgs/{org_id}/{path}", json={"email": email, "allocation": "1"}, headers=attacker.headers
            )
            for who, email in emails.items()
        }
        shapes = {who: shape(answer) for who, answer in answers.items()}
        assert len(set(shapes.values())) == 1, f"POST /orgs/{{id}}/{path} tells them apart: {shapes}"
    assert {who: a.status_code for who, a in answers.items()} == dict.fromkeys(emails, 201)
    same = [{k: v for k, v in a.json().items() if k not in {"id", "email", "created_at"}} for a in answers.values()]
    assert same[0] == same[1] == same[2]

    # The conflict is the invitee's to hear, when they accept.
    mine = (await async_client.get("/user/invitations", headers=elsewhere_owner.headers)).json()["data"]
    refused = await async_client.post(f"/user/invitations/{mine[0]['id']}/accept", headers=elsewhere_owner.headers)
    assert refused.status_code == 409
    assert "already belong to an organization" in refused.json()["error"]["message"]
    # An email with no account yet: the invitation waits for the user who signs up with it.
    ghost_user = await cg_user_factory(email=ghost)
    waiting = (await async_client.get("/user/invitations", headers=ghost_user.headers)).json()["data"]
    assert [i["org_id"] for i in waiting] == [org_id]


# -- F9: removal under traffic -------------------------------------------------------------------------------------
async def remove_under_traffic(
    client: httpx.AsyncClient, org_id: int, owner: TestUser, member: TestUser, *, rounds: int, burst: int
) -> tuple[list[int], list[int]]:
    """``rounds`` times: seat ``member`` again if removed, then a burst of their requests (staggered over a few ms)
    raced by a removal; after a removal, their next request. Returns every chat and every removal status."""
    chats: list[int] = []
    removals: list[int] = []
    seated = False
    rng = random.Random(26)

    async def one(delay: float) -> None:
        await asyncio.sleep(delay)
        chats.append((await client.post(CHAT, json=chat(), headers=member.headers)).status_code)

    async def remove(delay: float) -> None:
        await asyncio.sleep(delay)
        removals.append((await client.delete(f"/orgs/{org_id}/members/{member.id}", headers=owner.headers)).status_code)

    for r in range(rounds):
        if not seated:
            await join(client, org_id, owner, member, "1000")
        # Round by round the removal lands later: before the requests, among them, after them.
        await asyncio.gather(
            remove(0.0015 * r + rng.uniform(0, 0.001)), *(one(0.005 + 0.001 * i) for i in range(burst))
        )
        seated = removals[-1] != 204
        if not seated:
            await served_from_own_account(client, member)
    if seated:  # the last word: once nothing is in flight, the removal goes through
        assert (await client.delete(f"/orgs/{org_id}/members/{member.id}", headers=owner.headers)).status_code == 204
        await served_from_own_account(client, member)
    return chats, removals


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_removing_a_member_under_traffic_is_a_409_or_clean(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser, cg_upstream: FakeProvider
) -> None:
    owner, member = await cg_user_factory(), await cg_user_factory(credits=1000)
    org_id = await make_org(async_client, owner, cg_admin_user, "10000")
    cg_upstream.default = Reply(prompt_tokens=10, completion_tokens=10, latency=0.01)
    chats, removals = await remove_under_traffic(async_client, org_id, owner, member, rounds=12, burst=16)
    assert set(removals) <= {204, 409}, removals
    assert 204 in removals
    assert all(status < 500 for status in chats), sorted(chats)
    assert chats.count(200) >= len(chats) // 2, sorted(chats)  # served, not merely refused


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_removing_a_member_under_traffic_across_two_workers(
    cg_live_server_factory: GatewayFactory,
    cg_user_factory: UserFactory,
    cg_admin_user: TestUser,
    cg_upstream: FakeProvider,
) -> None:
    """Two worker processes: each caches the member's identity; the other learns of the removal by NOTIFY."""
    server = cg_live_server_factory(workers=2)
    owner, member = await cg_user_factory(), await cg_user_factory(credits=1000)
    cg_upstream.default = Reply(prompt_tokens=10, completion_tokens=10, latency=0.01)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        org_id = await make_org(client, owner, cg_admin_user, "10000")
        chats, removals = await remove_under_traffic(client, org_id, owner, member, rounds=6, burst=16)
    assert set(removals) <= {204, 409}, removals
    assert all(status < 500 for status in chats), sorted(chats)
