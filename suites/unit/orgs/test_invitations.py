"""app/orgs: invitations (terms, revoking, any-case emails), leaving and the last admin, and a seat that ends while
a request of its member is starting (F9): that request is refused with a 402, never failed, and the next is theirs."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.auth.service import hash_key
from creditgate.cache import TTLCache
from creditgate.db.models import Membership
from creditgate.errors import InsufficientCredits
from creditgate.ledger import service as ledger
from creditgate.orgs import service
from creditgate.runtime import Runtime
from creditgate.testing.gateway import TestUser, UserFactory
from suites.unit.orgs.test_orgs import CHAT, chat, join, make_org

SM = async_sessionmaker[AsyncSession]


async def _pending(client: httpx.AsyncClient, user: TestUser) -> list[dict[str, object]]:
    data: list[dict[str, object]] = (await client.get("/user/invitations", headers=user.headers)).json()["data"]
    return data


async def test_inviting_again_updates_the_terms_and_revoking_withdraws(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser
) -> None:
    owner, invitee = await cg_user_factory(), await cg_user_factory()
    org_id = await make_org(async_client, owner, cg_admin_user, "10")
    url = f"/orgs/{org_id}/invitations"
    first = await async_client.post(url, json={"email": invitee.email, "allocation": "1"}, headers=owner.headers)
    again = {"email": invitee.email.upper(), "allocation": "5", "role": "admin"}  # any case reaches the same email
    second = await async_client.post(url, json=again, headers=owner.headers)
    assert first.json()["id"] == second.json()["id"]
    assert {k: second.json()[k] for k in ("email", "role", "allocation", "status")} == {
        "email": invitee.email,
        "role": "admin",
        "allocation": "5.00",
        "status": "pending",
    }
    assert [(i["role"], i["allocation"]) for i in await _pending(async_client, invitee)] == [("admin", "5.00")]

    invitation = first.json()["id"]
    assert (
        await async_client.post(f"/user/invitations/{invitation}/decline", headers=invitee.headers)
    ).status_code == 204
    listed = (await async_client.get(url, headers=owner.headers)).json()["data"]
    assert [(i["id"], i["status"]) for i in listed] == [(invitation, "declined")]
    await async_client.post(url, json=again, headers=owner.headers)  # invited again: pending again
    assert (await async_client.delete(f"{url}/{invitation}", headers=owner.headers)).status_code == 204
    assert await _pending(async_client, invitee) == []
    late = await async_client.post(f"/user/invitations/{invitation}/accept", headers=invitee.headers)
    assert late.status_code == 404
    revoked_again = await async_client.delete(f"{url}/{invitation}", headers=owner.headers)
    assert (revoked_again.status_code, revoked_again.json()["error"]["message"]) == (
        409,
        f"invitation {invitation} is revoked, not pending",
    )
    # Only admins see or manage the org's invitations.
    assert (await async_client.get(url, headers=invitee.headers)).status_code == 403


async def test_the_last_admin_hands_over_before_leaving(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser
) -> None:
    owner, member = await cg_user_factory(), await cg_user_factory()
    org_id = await make_org(async_client, owner, cg_admin_user, "10")
    await join(async_client, org_id, owner, member, "2")
    assert (await async_client.delete(f"/orgs/{org_id}/members/me", headers=owner.headers)).status_code == 409
    demote = {"allocation": "0", "role": "member"}
    refused = await async_client.put(f"/orgs/{org_id}/members/{owner.id}", json=demote, headers=owner.headers)
    assert refused.status_code == 409
    promote = {"allocation": "2", "role": "admin"}
    promoted = await async_client.put(f"/orgs/{org_id}/members/{member.id}", json=promote, headers=owner.headers)
    assert [(m["user_id"], m["role"]) for m in promoted.json()["members"]] == [
        (owner.id, "admin"),
        (member.id, "admin"),
    ]
    assert (await async_client.delete(f"/orgs/{org_id}/members/me", headers=owner.headers)).status_code == 204
    # The new admin, alone, may leave too: the org keeps its credits, a gateway admin can still see and invite.
    assert (await async_client.delete(f"/orgs/{org_id}/members/me", headers=member.headers)).status_code == 204
    orphan = (await async_client.get(f"/orgs/{org_id}", headers=cg_admin_user.headers)).json()
    assert (orphan["balance"], orphan["members"]) == ("10.00", [])
    body = {"email": owner.email, "allocation": "0", "role": "admin"}
    assert (await async_client.post(f"/orgs/{org_id}/invitations", json=body, headers=cg_admin_user.headers)).is_success


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_a_request_that_started_before_the_seat_ended_is_refused_not_failed(
    async_client: httpx.AsyncClient,
    cg_user_factory: UserFactory,
    cg_admin_user: TestUser,
    cg_runtime: Runtime,
    cg_sessionmaker: SM,
    database_url: str,
) -> None:
    """The request read the member's identity (here: it is still in this worker's cache, as it would be in another
    worker until the change notification lands) just before an admin ended the seat."""
    owner, member = await cg_user_factory(), await cg_user_factory(credits=10)
    org_id = await make_org(async_client, owner, cg_admin_user, "100")
    await join(async_client, org_id, owner, member, "50")
    stale = None
    for _ in range(50):  # on Postgres the joining's own change notification may land after the first request
        assert (await async_client.post(CHAT, json=chat(), headers=member.headers)).status_code == 200
        if (stale := cg_runtime.caches.principal.get(hash_key(member.key))) is not None:
            break
        await asyncio.sleep(0.02)
    assert stale is not None
    assert stale[0].membership_id is not None

    async with cg_sessionmaker() as s, s.begin():
        await service.retire_member(s, org_id=org_id, user_id=member.id)
    assert cg_runtime.caches.principal.get(hash_key(member.key)) is None  # dropped: the next request is theirs
    if database_url.startswith("postgresql"):  # and dropped again when the change notification lands: wait for it
        generation = cg_runtime.caches.principal.generation
        for _ in range(100):
            if cg_runtime.caches.principal.generation > generation:
                break
            await asyncio.sleep(0.01)
    cg_runtime.caches.principal.put(hash_key(member.key), stale)
    refused = await async_client.post(CHAT, json=chat(), headers=member.headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (402, "no_allocation")
    with pytest.raises(InsufficientCredits):  # the ledger's own answer for the retired seat
        async with cg_sessionmaker() as s, s.begin():
            await ledger.place_hold(
                s,
                account_id=stale[0].account_id,
                amount=Decimal(1),
                request_id="stale",
                ttl=timedelta(minutes=1),
                membership_id=stale[0].membership_id,
            )

    cg_runtime.caches.principal.drop(hash_key(member.key))
    before = (await async_client.get("/user/balance", headers=member.headers)).json()["balance"]
    served = await async_client.post(CHAT, json=chat(), headers=member.headers)
    assert served.status_code == 200
    assert (await async_client.get("/user/balance", headers=member.headers)).json()["balance"] != before
    view = (await async_client.get(f"/orgs/{org_id}", headers=owner.headers)).json()
    assert [m["user_id"] for m in view["members"]] == [owner.id]
    async with cg_sessionmaker() as s, s.begin():
        assert await service.delete_retired(s, user_id=member.id)
        assert await s.scalar(select(Membership).where(Membership.user_id == member.id)) is None


async def test_a_retired_seat_does_not_stand_in_the_way_of_the_next_one(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser, cg_sessionmaker: SM
) -> None:
    owner, other_owner, member = await cg_user_factory(), await cg_user_factory(), await cg_user_factory()
    org_id = await make_org(async_client, owner, cg_admin_user, "10")
    other_org = await make_org(async_client, other_owner, cg_admin_user, "10")
    await join(async_client, org_id, owner, member, "1")
    async with cg_sessionmaker() as s, s.begin():  # ended, not yet deleted (within the grace period)
        await service.retire_member(s, org_id=org_id, user_id=member.id)
    joined = await join(async_client, other_org, other_owner, member, "3")
    assert [m["user_id"] for m in joined.json()["members"]] == [other_owner.id, member.id]
    async with cg_sessionmaker() as s, s.begin():
        await service.retire_member(s, org_id=other_org, user_id=member.id)
    assert (await async_client.post("/orgs", json={"name": "Own"}, headers=member.headers)).status_code == 201


def test_a_lookup_that_raced_a_change_is_not_cached() -> None:
    entries: TTLCache[str] = TTLCache(5)
    since = entries.generation  # a lookup starts and reads the old row...
    entries.drop("k")  # ...the change commits and drops the key...
    entries.put("k", "old", since=since)  # ...and the lookup's result arrives: not cached
    assert entries.get("k") is None
    entries.put("k", "new", since=entries.generation)
    assert entries.get("k") == "new"
