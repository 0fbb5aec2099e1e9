"""What a metered request leaves behind, field by field, on both ledger paths: the notices a user reads (quota,
low balance) and whose provider key a cached BYOK lookup hands out."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI

from creditgate.settings import Settings
from creditgate_harness.fakes.providers import FakeProvider, Reply
from creditgate_harness.gateway import TestUser, UserFactory

CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
EITHER_PATH = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


async def _notices(client: httpx.AsyncClient, user: TestUser) -> list[tuple[str, dict[str, object]]]:
    listed = (await client.get("/user/notifications", headers=user.headers)).json()["data"]
    return sorted((n["type"], n["data"]) for n in listed)


@EITHER_PATH
async def test_quota_notices_name_the_subject_the_calls_and_the_limit(
    cg_app: FastAPI, async_client: httpx.AsyncClient, cg_user_factory: UserFactory
) -> None:
    quotas = cg_app.state.runtime.quotas
    quotas.plans["tiny"], quotas.default_plan = 5, "tiny"
    user = await cg_user_factory(credits=1000)
    for _ in range(5):
        assert (await async_client.post(CHAT, json=BODY, headers=user.headers)).status_code == 200
    subject = f"user:{user.id}"
    assert await _notices(async_client, user) == [
        ("quota_100", {"subject": subject, "calls": 5, "limit": 5}),
        ("quota_80", {"subject": subject, "calls": 4, "limit": 5}),
    ]


@EITHER_PATH
async def test_the_low_balance_notice_carries_the_balance_after_the_charge(
    cg_settings: Settings, async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_settings.notify_low_balance = Decimal("999.99")
    cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=1000))
    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    charged = Decimal(response.headers["X-Creditgate-Credits-Charged"])
    assert charged > Decimal("0.01")
    after = str(Decimal("1000.00") - charged)
    assert await _notices(async_client, cg_funded_user) == [("low_balance", {"balance": after, "threshold": "999.99"})]


@EITHER_PATH
async def test_a_cached_byok_key_is_only_ever_its_owners(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_upstream: FakeProvider
) -> None:
    owner, other = await cg_user_factory(credits=1000), await cg_user_factory(credits=1000)
    await async_client.post(
        "/user/provider-keys", json={"provider": "fake", "api_key": "sk-owner-own-key-1234"}, headers=owner.headers
    )
    for user in (owner, other, owner, other):  # each lookup after the first comes from the worker's cache
        cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=400))
        response = await async_client.post(CHAT, json=BODY, headers=user.headers)
        assert response.status_code == 200, response.text
        sent = cg_upstream.calls[-1].headers["authorization"]
        assert (sent == "Bearer sk-owner-own-key-1234") is (user is owner)
        assert (response.headers["X-Creditgate-Credits-Charged"] == "0.00") is (user is owner)
