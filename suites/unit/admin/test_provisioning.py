"""Admin provisioning (users, keys, orgs, deactivation) and the read-only ledger audit endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.admin.ledger_audit import audit_ledger
from creditgate.db.engine import create_engine
from creditgate.testing.auditor import AuditReport, audit_url
from creditgate.testing.gateway import TestUser

CHAT = {"model": "test-model", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


async def test_every_provisioning_route_needs_an_admin(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    calls = [
        ("PUT", "/admin/users", {"email": "a@load.test"}),
        ("POST", "/admin/keys", {"email": cg_funded_user.email}),
        ("POST", "/admin/users/deactivate", {"emails": [cg_funded_user.email]}),
        ("POST", "/admin/orgs", {"name": "o", "owner_email": cg_funded_user.email}),
        ("GET", "/admin/ledger/audit", None),
    ]
    for method, path, body in calls:
        response = await async_client.request(method, path, json=body, headers=cg_funded_user.headers)
        assert response.status_code == 403, (path, response.text)
        assert (await async_client.request(method, path, json=body)).status_code == 401


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_users_are_provisioned_once_even_when_raced(
    async_client: httpx.AsyncClient, cg_admin_user: TestUser
) -> None:
    h = cg_admin_user.headers
    responses = await asyncio.gather(
        *(async_client.put("/admin/users", json={"email": "run1-u0@load.test"}, headers=h) for _ in range(6))
    )
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
    assert sorted(r.json()["created"] for r in responses) == [False] * 5 + [True]
    assert len({(r.json()["user_id"], r.json()["account_id"]) for r in responses}) == 1
    assert responses[0].json()["is_admin"] is False
    assert responses[0].json()["org_id"] is None


async def test_a_provisioned_key_spends_and_deactivation_revokes_it(
    async_client: httpx.AsyncClient, cg_admin_user: TestUser
) -> None:
    h = cg_admin_user.headers
    await async_client.put("/admin/users", json={"email": "run1-u1@load.test"}, headers=h)
    grant = {"email": "run1-u1@load.test", "amount": "10", "idempotency_key": "run1:u1"}
    assert (await async_client.post("/admin/credits", json=grant, headers=h)).status_code == 200
    issued = await async_client.post("/admin/keys", json={"email": "run1-u1@load.test", "ttl_seconds": 3600}, headers=h)
    assert issued.status_code == 201, issued.text
    body = issued.json()
    assert body["key"].startswith(body["prefix"])
    assert body["expires_at"] is not None
    user = {"Authorization": f"Bearer {body['key']}"}
    assert (await async_client.post("/v1/chat/completions", json=CHAT, headers=user)).status_code == 200

    off = {"emails": ["run1-u1@load.test", "nobody@load.test"]}
    done = await async_client.post("/admin/users/deactivate", json=off, headers=h)
    assert done.json() == {"users": 1, "keys_revoked": 1, "missing": ["nobody@load.test"]}
    assert (await async_client.post("/v1/chat/completions", json=CHAT, headers=user)).status_code == 401
    again = await async_client.post("/admin/users/deactivate", json=off, headers=h)
    assert again.json()["keys_revoked"] == 0  # safe to repeat


async def test_admins_get_no_keys_and_are_not_deactivated_here(
    async_client: httpx.AsyncClient, cg_admin_user: TestUser
) -> None:
    h = cg_admin_user.headers
    key = await async_client.post("/admin/keys", json={"email": cg_admin_user.email}, headers=h)
    assert key.status_code == 409
    off = await async_client.post("/admin/users/deactivate", json={"emails": [cg_admin_user.email]}, headers=h)
    assert off.status_code == 409
    assert (await async_client.get("/admin/ledger/audit", headers=h)).status_code == 200  # the key still works


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/admin/keys", {"email": "missing@load.test"}, 404),
        ("/admin/keys", {"email": "x@load.test", "ttl_seconds": 5}, 422),
        ("/admin/keys", {"email": "not-an-email"}, 422),
        ("/admin/users/deactivate", {"emails": []}, 422),
        ("/admin/orgs", {"name": "o", "owner_email": "missing@load.test"}, 404),
        ("/admin/orgs", {"name": "", "owner_email": "x@load.test"}, 422),
    ],
)
async def test_bad_provisioning_requests(
    async_client: httpx.AsyncClient, cg_admin_user: TestUser, path: str, body: dict[str, object], status: int
) -> None:
    response = await async_client.post(path, json=body, headers=cg_admin_user.headers)
    assert response.status_code == status, response.text


async def test_an_org_is_provisioned_once_for_its_owner(
    async_client: httpx.AsyncClient, cg_admin_user: TestUser
) -> None:
    h = cg_admin_user.headers
    await async_client.put("/admin/users", json={"email": "run1-owner@load.test"}, headers=h)
    org = {"name": "load run1", "owner_email": "run1-owner@load.test"}
    first = await async_client.post("/admin/orgs", json=org, headers=h)
    second = await async_client.post("/admin/orgs", json=org, headers=h)
    assert first.status_code == second.status_code == 200
    assert (first.json()["created"], second.json()["created"]) == (True, False)
    assert first.json()["org_id"] == second.json()["org_id"]
    other = await async_client.post("/admin/orgs", json={**org, "name": "another"}, headers=h)
    assert other.status_code == 409
    owner = await async_client.put("/admin/users", json={"email": "run1-owner@load.test"}, headers=h)
    assert owner.json()["org_id"] == first.json()["org_id"]
    # Members are invited with the existing org route, which an admin key may call; each accepts with their key.
    await async_client.put("/admin/users", json={"email": "run1-m0@load.test"}, headers=h)
    member = {"email": "run1-m0@load.test", "allocation": "5"}
    invited = await async_client.post(f"/orgs/{first.json()['org_id']}/invitations", json=member, headers=h)
    assert invited.status_code == 201, invited.text
    key = (await async_client.post("/admin/keys", json={"email": "run1-m0@load.test"}, headers=h)).json()["key"]
    accept = f"/user/invitations/{invited.json()['id']}/accept"
    accepted = await async_client.post(accept, headers={"Authorization": f"Bearer {key}"})
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_the_audit_reports_each_accounts_money(
    async_client: httpx.AsyncClient, cg_admin_user: TestUser, cg_funded_user: TestUser
) -> None:
    h = cg_admin_user.headers
    before = (
        await async_client.get("/admin/ledger/audit", params={"account_id": cg_funded_user.account_id}, headers=h)
    ).json()
    assert before["ok"]
    assert before["scope"] == "accounts"
    assert before["accounts"] == 1
    assert before["balances"][0]["balance"] == "1000.00"
    assert (
        await async_client.post("/v1/chat/completions", json=CHAT, headers=cg_funded_user.headers)
    ).status_code == 200
    grant = {"email": cg_funded_user.email, "amount": "2.50", "idempotency_key": "audit-test"}
    await async_client.post("/admin/credits", json=grant, headers=h)
    params = {"account_id": cg_funded_user.account_id, "since_entry": before["last_entry_id"]}
    after = (await async_client.get("/admin/ledger/audit", params=params, headers=h)).json()
    account = after["balances"][0]
    since = account["since_entry"]
    assert since["bonus"] == "2.50"
    assert since["hold"] == f"-{since['release']}"
    charged = -float(since["api_usage"])
    assert charged > 0
    assert float(account["balance"]) == pytest.approx(1000 + 2.5 - charged)
    assert (account["open_holds"], account["open_held"], account["stale_holds"]) == (0, "0.00", 0)
    whole = (await async_client.get("/admin/ledger/audit", headers=h)).json()
    assert whole["ok"]
    assert whole["scope"] == "ledger"
    assert whole["balances"] == []
    assert whole["accounts"] >= 2
    assert whole["entries"] >= after["entries"]


@pytest.mark.parametrize("params", [{"account_id": 0}, {"account_id": "x"}, {"since_entry": -1}, {"grace_seconds": -1}])
async def test_bad_audit_parameters_are_422(
    async_client: httpx.AsyncClient, cg_admin_user: TestUser, params: dict[str, object]
) -> None:
    response = await async_client.get("/admin/ledger/audit", params=params, headers=cg_admin_user.headers)
    assert response.status_code == 422


CORRUPTIONS: dict[str, Callable[[int], str]] = {
    "balance-vs-ledger": lambda account: f"UPDATE accounts SET balance = balance + 7 WHERE id = {account}",
    "running-balance": lambda account: (
        f"UPDATE ledger_entries SET balance_after = balance_after + 1 WHERE account_id = {account}"
    ),
    "stale-hold": lambda account: (
        "INSERT INTO holds (account_id, request_id, amount, status, charged, created_at, expires_at) "
        f"VALUES ({account}, 'r-stale', 0, 'open', 0, '2020-01-01 00:00:00', '2020-01-01 00:00:00')"
    ),
}


@pytest.mark.no_audit
@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("check", sorted(CORRUPTIONS))
async def test_the_endpoint_finds_what_the_harness_auditor_finds(
    async_client: httpx.AsyncClient,
    cg_admin_user: TestUser,
    cg_funded_user: TestUser,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    database_url: str,
    check: str,
) -> None:
    async with cg_sessionmaker() as s, s.begin():
        await s.execute(sa.text(CORRUPTIONS[check](cg_funded_user.account_id)))
    harness: AuditReport = audit_url(database_url)
    response = await async_client.get("/admin/ledger/audit", headers=cg_admin_user.headers)
    found = response.json()
    assert not found["ok"]
    assert not harness.ok
    checks = {v["check"] for v in found["violations"]}
    assert checks == {v.check for v in harness.violations}
    assert check in checks
    scoped = await async_client.get(
        "/admin/ledger/audit", params={"account_id": cg_admin_user.account_id}, headers=cg_admin_user.headers
    )
    assert scoped.json()["ok"]  # the corruption is on another account
    if check == "stale-hold":
        engine = create_engine(database_url)
        tolerant = await audit_ledger(engine, grace=timedelta(days=36500))
        await engine.dispose()
        assert [f.check for f in tolerant.findings] == ["hold-entry"]  # the planted hold has no entry


async def test_a_user_created_between_the_lookup_and_the_insert_is_returned_not_refused(
    async_client: httpx.AsyncClient, cg_admin_user: TestUser, cg_funded_user: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the test above runs, made certain: the lookup misses a user another request has just committed."""
    from creditgate.auth import service as auth

    real, missed = auth.find_user, []

    async def late(session: Any, *, email: str) -> Any:
        if not missed:
            missed.append(email)
            return None  # as if looked up just before the other request committed
        return await real(session, email=email)

    monkeypatch.setattr(auth, "find_user", late)
    response = await async_client.put(
        "/admin/users", json={"email": cg_funded_user.email}, headers=cg_admin_user.headers
    )
    assert response.status_code == 200, response.text
    assert (response.json()["user_id"], response.json()["created"]) == (cg_funded_user.id, False)
