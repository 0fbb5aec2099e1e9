"""app/admin/routes.py: admin grants, 403 for non-admins, idempotency."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from creditgate.testing.gateway import TestUser


async def test_non_admin_gets_403(async_client: httpx.AsyncClient, cg_funded_user: TestUser) -> None:
    grant = {"email": cg_funded_user.email, "amount": "5", "idempotency_key": "k"}
    response = await async_client.post("/admin/credits", json=grant, headers=cg_funded_user.headers)
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_denied"


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_grant_is_idempotent_even_when_raced(
    async_client: httpx.AsyncClient, cg_admin_user: TestUser, cg_funded_user: TestUser
) -> None:
    grant = {"email": cg_funded_user.email, "amount": "12.34", "idempotency_key": "promo-1", "description": "promo"}
    responses = await asyncio.gather(
        *(async_client.post("/admin/credits", json=grant, headers=cg_admin_user.headers) for _ in range(8))
    )
    assert {r.status_code for r in responses} == {200}
    assert sorted(r.json()["replayed"] for r in responses) == [False] + [True] * 7
    assert len({r.json()["entry_id"] for r in responses}) == 1
    balance = (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"]
    assert balance == "1012.34"
    conflict = await async_client.post("/admin/credits", json={**grant, "amount": "99"}, headers=cg_admin_user.headers)
    assert conflict.status_code == 409


@pytest.mark.parametrize(
    ("grant", "status"),
    [
        ({"amount": "0.001"}, 422),
        ({"amount": "-1", "type": "bonus"}, 422),
        ({"amount": "NaN"}, 422),
        ({"amount": "1e20"}, 422),
        ({"email": "nobody@example.test"}, 404),
        ({"amount": "-5000", "type": "adjustment"}, 402),
    ],
)
async def test_bad_grants(
    async_client: httpx.AsyncClient,
    cg_admin_user: TestUser,
    cg_funded_user: TestUser,
    grant: dict[str, str],
    status: int,
) -> None:
    body = {"email": cg_funded_user.email, "amount": "1", "idempotency_key": "x", **grant}
    response = await async_client.post("/admin/credits", json=body, headers=cg_admin_user.headers)
    assert response.status_code == status, response.text
    balance = (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"]
    assert balance == "1000.00"
