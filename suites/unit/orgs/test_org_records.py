"""app/orgs/service.py, what a user of the org API sees besides balances: membership changes reaching the very next
request, the members list, leaving with requests in flight, and every refusal's words."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.db.models import Hold, Membership
from creditgate.ledger import service as ledger
from creditgate.orgs.service import org_account_id
from creditgate.testing.gateway import TestUser, UserFactory
from suites.unit.orgs.test_orgs import CHAT, chat, join, make_org

SM = async_sessionmaker[AsyncSession]


async def _error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["message"]


async def test_joining_and_founding_reach_the_next_request(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser
) -> None:
    owner, member = await cg_user_factory(credits=100), await cg_user_factory(credits=100)
    for user in (owner, member):  # each principal is now cached as a user without an org
        assert (await async_client.post(CHAT, json=chat(10), headers=user.headers)).status_code == 200
    org_id = await make_org(async_client, owner, cg_admin_user, "100")
    founder = await async_client.post(CHAT, json=chat(10), headers=owner.headers)
    assert founder.status_code == 402  # the founder's seat has no allocation yet: seen at once, not after the TTL
    assert founder.json()["error"]["reason"] == "no_allocation"

    balance = (await async_client.get("/user/balance", headers=member.headers)).json()["balance"]
    await join(async_client, org_id, owner, member, "50")
    assert (await async_client.post(CHAT, json=chat(10), headers=member.headers)).status_code == 200
    assert (await async_client.get("/user/balance", headers=member.headers)).json()["balance"] == balance
    assert (await async_client.get(f"/orgs/{org_id}", headers=owner.headers)).json()["balance"] != "100.00"


async def test_the_members_list_in_joining_order(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser
) -> None:
    owner, first, second = await cg_user_factory(), await cg_user_factory(), await cg_user_factory()
    org_id = await make_org(async_client, owner, cg_admin_user, "10")
    for user, allocation, role in ((second, "7.5", "admin"), (first, "5", "member")):
        await join(async_client, org_id, owner, user, allocation, role)
    org = (await async_client.get(f"/orgs/{org_id}", headers=first.headers)).json()
    assert [(m["user_id"], m["role"], m["allocation"], m["used"]) for m in org["members"]] == [
        (owner.id, "admin", "0.00", "0.00"),
        (second.id, "admin", "7.50", "0.00"),
        (first.id, "member", "5.00", "0.00"),
    ]
    assert (org["name"], org["balance"], org["allocated"]) == ("Acme", "10.00", "12.50")


async def test_a_member_with_a_request_in_flight_cannot_be_removed(
    async_client: httpx.AsyncClient,
    cg_user_factory: UserFactory,
    cg_admin_user: TestUser,
    cg_sessionmaker: SM,
) -> None:
    owner, leaving, staying = await cg_user_factory(), await cg_user_factory(), await cg_user_factory()
    org_id = await make_org(async_client, owner, cg_admin_user, "100")
    for user in (leaving, staying):
        await join(async_client, org_id, owner, user, "20")
    async with cg_sessionmaker() as s:
        seats = {m.user_id: m for m in await s.scalars(select(Membership).where(Membership.org_id == org_id))}
    holds = {}
    async with cg_sessionmaker() as s, s.begin():
        account_id = await org_account_id(s, org_id)
        for user in (leaving, staying):
            holds[user.id] = await ledger.place_hold(
                s,
                account_id=account_id,
                amount=Decimal(1),
                request_id=f"in-flight-{user.id}",
                ttl=timedelta(minutes=5),
                membership_id=seats[user.id].id,
            )
    refused = await async_client.delete(f"/orgs/{org_id}/members/{leaving.id}", headers=owner.headers)
    assert await _error(refused) == (409, "the member has requests in flight; try again when they finish")

    async with cg_sessionmaker() as s, s.begin():
        await ledger.settle_hold(
            s, hold_id=holds[leaving.id], request_id=f"in-flight-{leaving.id}", charge=Decimal("0.5")
        )
    removed = await async_client.delete(f"/orgs/{org_id}/members/{leaving.id}", headers=owner.headers)
    assert removed.status_code == 204
    async with cg_sessionmaker() as s:
        kept = {h.id: h.membership_id for h in await s.scalars(select(Hold))}
    assert kept == {holds[leaving.id]: None, holds[staying.id]: seats[staying.id].id}  # history kept, seat detached


async def test_every_org_refusal_says_what_and_why(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser
) -> None:
    owner, member, outsider = await cg_user_factory(), await cg_user_factory(), await cg_user_factory()
    other_owner = await cg_user_factory()
    org_id = await make_org(async_client, owner, cg_admin_user, "10")
    other_org = await make_org(async_client, other_owner, cg_admin_user, "10")
    await join(async_client, org_id, owner, member, "1")

    def members(org: int) -> str:
        return f"/orgs/{org}/members"

    assert await _error(await async_client.get("/orgs/999", headers=owner.headers)) == (
        404,
        "organization 999 does not exist",
    )
    assert await _error(await async_client.get(f"/orgs/{org_id}", headers=outsider.headers)) == (
        403,
        "you are not a member of this organization",
    )
    assert await _error(
        await async_client.put(f"{members(org_id)}/{member.id}", json={"allocation": "5"}, headers=member.headers)
    ) == (403, "only an organization admin can do this")
    assert await _error(await async_client.post("/orgs", json={"name": "Again"}, headers=owner.headers)) == (
        409,
        "you already belong to an organization",
    )
    # Inviting tells the inviter nothing about the email; the one who cannot join hears why when accepting.
    taken = {"email": other_owner.email, "allocation": "1"}
    invited = await async_client.post(f"/orgs/{org_id}/invitations", json=taken, headers=owner.headers)
    assert invited.status_code == 201
    invitation = invited.json()["id"]
    assert await _error(
        await async_client.post(f"/user/invitations/{invitation}/accept", headers=other_owner.headers)
    ) == (409, "you already belong to an organization; leave it before accepting")
    assert await _error(
        await async_client.post(f"/user/invitations/{invitation}/accept", headers=outsider.headers)
    ) == (404, f"you have no pending invitation {invitation}")
    assert await _error(await async_client.post(f"/orgs/{org_id}/invitations", json=taken, headers=member.headers)) == (
        403,
        "only an organization admin can do this",
    )
    assert await _error(await async_client.delete(f"{members(org_id)}/me", headers=owner.headers)) == (
        409,
        "the organization's last admin cannot step down while it has other members; make one an admin",
    )
    assert await _error(await async_client.delete(f"{members(org_id)}/me", headers=outsider.headers)) == (
        403,
        "you are not a member of this organization",
    )
    assert await _error(
        await async_client.delete(f"/orgs/{org_id}/invitations/{invitation + 1000}", headers=owner.headers)
    ) == (404, f"organization {org_id} has no invitation {invitation + 1000}")
    for user in (outsider, other_owner):  # not a member here: nobody, or someone else's member
        assert await _error(
            await async_client.put(f"{members(org_id)}/{user.id}", json={"allocation": "5"}, headers=owner.headers)
        ) == (404, f"user {user.id} is not a member of organization {org_id}")
    grant = {"org_id": 999, "amount": "1", "idempotency_key": "nope"}
    assert await _error(await async_client.post("/admin/credits", json=grant, headers=cg_admin_user.headers)) == (
        404,
        "organization 999 does not exist",
    )
    other = (await async_client.get(f"/orgs/{other_org}", headers=other_owner.headers)).json()
    assert [m["allocation"] for m in other["members"]] == ["0.00"]  # untouched by the refused change


async def test_viewing_a_missing_org_names_it(cg_sessionmaker: SM) -> None:
    from creditgate.errors import NotFound
    from creditgate.orgs import service

    async with cg_sessionmaker() as s:
        with pytest.raises(NotFound) as missing:
            await service.view(s, 999)
    assert missing.value.message == "organization 999 does not exist"
