"""app/users/routes.py: balance, transaction pages and summaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from creditgate.testing.gateway import TestUser

CHAT = {"model": "test-model", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


async def test_history_pages_are_stable_and_filterable(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    for _ in range(3):
        assert (
            await async_client.post("/v1/chat/completions", json=CHAT, headers=cg_funded_user.headers)
        ).status_code == 200
    everything = (await async_client.get("/user/transactions?limit=500", headers=cg_funded_user.headers)).json()
    assert everything["total"] == 10  # bonus + 3 × (hold, release, api_usage)
    ids = [t["id"] for t in everything["data"]]
    assert ids == sorted(ids, reverse=True)
    paged: list[int] = []
    for offset in range(0, 10, 3):
        page = (
            await async_client.get(f"/user/transactions?limit=3&offset={offset}", headers=cg_funded_user.headers)
        ).json()
        paged += [t["id"] for t in page["data"]]
    assert paged == ids
    usage = (await async_client.get("/user/transactions?type=api_usage", headers=cg_funded_user.headers)).json()
    assert usage["total"] == 3
    assert all(t["type"] == "api_usage" and t["amount"].startswith("-") for t in usage["data"])
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    later = await async_client.get("/user/transactions", params={"start": future}, headers=cg_funded_user.headers)
    assert later.json()["total"] == 0


async def test_balance_and_summary_agree_to_the_cent(async_client: httpx.AsyncClient, cg_funded_user: TestUser) -> None:
    for _ in range(5):
        await async_client.post("/v1/chat/completions", json=CHAT, headers=cg_funded_user.headers)
    balance = (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()
    summary = (await async_client.get("/user/transactions/summary", headers=cg_funded_user.headers)).json()
    assert balance["balance"] == summary["net_balance"]
    assert Decimal(summary["total_bonus"]) - Decimal(summary["total_spent"]) == Decimal(summary["net_balance"])
    empty = await async_client.get(
        "/user/transactions/summary", params={"end": "2000-01-01T00:00:00"}, headers=cg_funded_user.headers
    )
    assert empty.json()["net_balance"] == "0.00"


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "offset=-1", "type=gift", "start=yesterday", "limit=abc"])
async def test_bad_query_is_422(async_client: httpx.AsyncClient, cg_funded_user: TestUser, query: str) -> None:
    response = await async_client.get(f"/user/transactions?{query}", headers=cg_funded_user.headers)
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request"


async def test_user_routes_need_a_key(async_client: httpx.AsyncClient) -> None:
    for path in ("/user/balance", "/user/transactions", "/user/transactions/summary"):
        assert (await async_client.get(path)).status_code == 401
