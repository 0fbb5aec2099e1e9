"""The request path's caches: a change applies from the next request, here and on every other worker."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import asyncpg
import httpx
import pytest

from creditgate import cache
from creditgate.db.engine import libpq_url
from creditgate.runtime import Runtime
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness import until

CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


async def test_joining_an_org_charges_the_org_from_the_next_request(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser
) -> None:
    owner = await cg_user_factory(credits=0)
    member = await cg_user_factory(credits=50)
    org = (await async_client.post("/orgs", json={"name": "acme"}, headers=owner.headers)).json()
    grant = {"org_id": org["id"], "amount": "100", "idempotency_key": "seed-acme", "reason": "test"}
    assert (await async_client.post("/admin/credits", json=grant, headers=cg_admin_user.headers)).status_code == 200
    assert (await async_client.post(CHAT, json=BODY, headers=member.headers)).status_code == 200  # cached now
    invited = await async_client.post(
        f"/orgs/{org['id']}/invitations", json={"email": member.email, "allocation": "10"}, headers=owner.headers
    )
    assert invited.status_code == 201, invited.text
    accepted = await async_client.post(f"/user/invitations/{invited.json()['id']}/accept", headers=member.headers)
    assert accepted.status_code == 200, accepted.text

    charged = await async_client.post(CHAT, json=BODY, headers=member.headers)

    assert charged.status_code == 200
    view = (await async_client.get(f"/orgs/{org['id']}", headers=owner.headers)).json()
    assert Decimal(view["balance"]) < Decimal(100), "the org paid, not the member's cached personal account"


async def test_a_plan_change_applies_from_the_next_request(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_admin_user: TestUser, cg_runtime: Runtime
) -> None:
    subject = f"user:{cg_funded_user.id}"
    assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 200
    assert cg_runtime.caches.plan.get(subject) == "trial"

    body = {"email": cg_funded_user.email, "plan": "enterprise"}
    assert (await async_client.put("/admin/subscriptions", json=body, headers=cg_admin_user.headers)).status_code == 200

    assert cg_runtime.caches.plan.get(subject) is None
    assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 200
    assert cg_runtime.caches.plan.get(subject) == "enterprise"


async def test_a_change_is_dropped_at_once_and_again_at_commit(cg_runtime: Runtime) -> None:
    cg_runtime.caches.plan.put("user:42", "trial")
    async with cg_runtime.sessionmaker.begin() as session:
        await cache.changed(session, "plan", "user:42")
        assert cg_runtime.caches.plan.get("user:42") is None  # this transaction's own reads see the change
        cg_runtime.caches.plan.put("user:42", "trial")  # a concurrent request caches the old row meanwhile
    assert cg_runtime.caches.plan.get("user:42") is None


def test_entries_expire_after_the_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(cache.time, "monotonic", lambda: now[0])
    entries: cache.TTLCache[str] = cache.TTLCache(5)
    entries.put("k", "v")
    now[0] += 4.9
    assert entries.get("k") == "v"
    now[0] += 0.2
    assert entries.get("k") is None


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_another_workers_change_reaches_this_one_through_notify(database_url: str) -> None:
    caches = cache.Caches(60)
    caches.byok.put("7", {"fake": "sk-old"})
    caches.principal.put("digest", object())
    listener = asyncio.create_task(cache.listen(database_url))
    try:
        other_worker = await asyncpg.connect(libpq_url(database_url))
        try:
            await until(lambda: _listening(caches), seconds=10, what="the listener to connect")
            caches.byok.put("7", {"fake": "sk-old"})
            await other_worker.execute("SELECT pg_notify($1, $2)", cache.CHANNEL, "byok:7")
            await until(lambda: caches.byok.get("7") is None, seconds=5, what="the notification to drop the key")
        finally:
            await other_worker.close()
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


def _listening(caches: cache.Caches) -> bool:
    """The listener flushes everything when it (re)connects: an emptied principal cache means it is up."""
    return caches.principal.get("digest") is None
