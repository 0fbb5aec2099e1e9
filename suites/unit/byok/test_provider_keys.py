"""app/byok: keys stored encrypted, never returned, used for their provider at 0 credits (usage recorded)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.byok.service import store
from creditgate.db.models import ProviderKey
from creditgate.runtime import Runtime
from creditgate.testing.gateway import TestUser
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply

KEYS = "/user/provider-keys"
BODY = {"model": "test-model", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}


async def test_store_list_replace_delete(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    secret = "sk-user-own-key-1234"
    stored = await async_client.post(KEYS, json={"provider": "fake", "api_key": secret}, headers=cg_funded_user.headers)
    assert stored.status_code == 200
    assert stored.json()["last4"] == "1234"
    listed = (await async_client.get(KEYS, headers=cg_funded_user.headers)).text
    assert secret not in listed
    async with cg_sessionmaker() as s:
        row = await s.scalar(select(ProviderKey))
    assert row is not None
    assert secret not in row.encrypted_key  # encrypted at rest
    await async_client.post(
        KEYS, json={"provider": "fake", "api_key": "sk-user-new-key-9999"}, headers=cg_funded_user.headers
    )
    assert [k["last4"] for k in (await async_client.get(KEYS, headers=cg_funded_user.headers)).json()["data"]] == [
        "9999"
    ]
    assert (await async_client.delete(f"{KEYS}/fake", headers=cg_funded_user.headers)).status_code == 204
    assert (await async_client.delete(f"{KEYS}/fake", headers=cg_funded_user.headers)).status_code == 404
    bad = await async_client.post(
        KEYS, json={"provider": "nope", "api_key": "sk-12345678"}, headers=cg_funded_user.headers
    )
    assert bad.status_code == 422


async def test_byok_request_uses_the_users_key_and_costs_nothing(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    await async_client.post(
        KEYS, json={"provider": "fake", "api_key": "sk-user-own-key-1234"}, headers=cg_funded_user.headers
    )
    cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=400))
    response = await async_client.post("/v1/chat/completions", json=BODY, headers=cg_funded_user.headers)
    assert response.status_code == 200
    assert response.headers["X-Creditgate-Credits-Charged"] == "0.00"
    assert cg_upstream.calls[0].headers["authorization"] == "Bearer sk-user-own-key-1234"
    assert (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"] == "1000.00"
    usage = (await async_client.get("/user/usage", headers=cg_funded_user.headers)).json()["data"][0]
    assert (usage["byok"], usage["credits"], usage["prompt_tokens"], usage["completion_tokens"]) == (
        True,
        "0.00",
        1000,
        400,
    )


async def test_byok_with_no_credits_still_works(async_client: httpx.AsyncClient, cg_user_factory) -> None:  # type: ignore[no-untyped-def]
    broke = await cg_user_factory(credits=0)
    assert (await async_client.post("/v1/chat/completions", json=BODY, headers=broke.headers)).status_code == 402
    await async_client.post(KEYS, json={"provider": "fake", "api_key": "sk-user-own-key-1234"}, headers=broke.headers)
    assert (await async_client.post("/v1/chat/completions", json=BODY, headers=broke.headers)).status_code == 200


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (Fault.status_code(401), 400, "byok_key_rejected"),
        (Fault.status_code(403), 400, "byok_key_rejected"),
        (Fault.rate_limited(retry_after=7), 429, "byok_rate_limited"),
    ],
    ids=["401", "403", "429"],
)
async def test_a_key_the_vendor_refuses_is_the_users_4xx_naming_it_and_the_operators_key_is_not_tried(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_upstream: FakeProvider,
    fault: Fault,
    status: int,
    code: str,
) -> None:
    await async_client.post(
        KEYS, json={"provider": "fake", "api_key": "sk-user-own-key-1234"}, headers=cg_funded_user.headers
    )
    cg_upstream.default = fault
    for path in ("/v1/chat/completions", "/v1/messages"):
        response = await async_client.post(path, json=BODY, headers=cg_funded_user.headers)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert (error["code"], error["provider"], error["key_last4"]) == (code, "fake", "1234")
        assert "…1234" in error["message"]
        assert "sk-user-own-key" not in response.text
        if status == 429:
            assert response.headers["Retry-After"] == "7"
    assert [c.headers["authorization"] for c in cg_upstream.calls] == ["Bearer sk-user-own-key-1234"] * 2
    assert (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"] == "1000.00"


@pytest.mark.parametrize("key", ["sk-caf\u00e9-12345678", "sk-abc\r\nX-Evil: 1", "sk-tab\tinside-1234"])
async def test_a_key_an_http_header_cannot_carry_is_refused_when_stored(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, key: str
) -> None:
    refused = await async_client.post(KEYS, json={"provider": "fake", "api_key": key}, headers=cg_funded_user.headers)
    assert refused.status_code == 422, refused.text
    assert (await async_client.get(KEYS, headers=cg_funded_user.headers)).json()["data"] == []


@pytest.mark.parametrize("stream", [False, True])
async def test_a_stored_key_an_http_header_cannot_carry_is_a_400_and_costs_nothing(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_runtime: Runtime,
    cg_upstream: FakeProvider,
    stream: bool,
) -> None:
    """One stored before keys were checked (or written around the route): the request is refused before any
    provider is asked, in either answer mode, and the hold goes back (it was a 500 on the stream path)."""
    async with cg_runtime.sessionmaker() as session, session.begin():
        await store(session, user_id=cg_funded_user.id, provider="fake", key="sk-caf\u00e9-12345678",
                    settings=cg_runtime.settings, catalog=cg_runtime.catalog)  # fmt: skip
    response = await async_client.post("/v1/chat/completions", json={**BODY, "stream": stream},
                                       headers=cg_funded_user.headers)  # fmt: skip
    assert response.status_code == 400, response.text
    assert "header" in response.json()["error"]["message"]
    assert cg_upstream.calls == []
    assert (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"] == "1000.00"
