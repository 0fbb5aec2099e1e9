"""POST /v1/chat/completions: pricing, holds, auth, bad input and provider faults."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import pytest

from creditgate.catalog import pricing
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply

CHAT = "/v1/chat/completions"


def body(model: str = "test-model", max_tokens: int | None = 100, content: str = "hello") -> dict[str, object]:
    payload: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    return payload


async def balance(client: httpx.AsyncClient, user: TestUser) -> Decimal:
    response = await client.get("/user/balance", headers=user.headers)
    assert response.status_code == 200
    assert response.json()["held"] == "0.00"
    return Decimal(response.json()["balance"])


def expected_charge(prompt: int, completion: int) -> Decimal:
    model = catalog_for_tests().model("test-model")
    return pricing.credits_for(
        model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        margin=Decimal("1.5"),
        credit_value_usd=Decimal("0.01"),
        increment=Decimal("0.1"),
    )


async def test_completion_is_charged_from_upstream_usage(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="hi there", prompt_tokens=1200, completion_tokens=800))
    prompt = "word " * 1200  # the gateway's estimate is above the 1,200 tokens the fake reports
    response = await async_client.post(CHAT, json=body(max_tokens=1000, content=prompt), headers=cg_funded_user.headers)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "test-model"
    assert data["choices"][0]["message"]["content"] == "hi there"
    assert data["usage"] == {"prompt_tokens": 1200, "completion_tokens": 800, "total_tokens": 2000}
    # (1.2 × $0.001 + 0.8 × $0.002) × 1.5 = $0.0042 → 0.42 credits → 0.5 at increment 0.1
    assert expected_charge(1200, 800) == Decimal("0.5")
    assert response.headers["X-Creditgate-Credits-Charged"] == "0.50"
    assert await balance(async_client, cg_funded_user) == Decimal("999.50")
    summary = (await async_client.get("/user/transactions/summary", headers=cg_funded_user.headers)).json()
    assert summary["total_spent"] == "0.50"
    assert summary["net_balance"] == "999.50"
    sent = cg_upstream.calls[0].body
    assert sent["max_tokens"] == 1000
    assert sent["model"] == "test-model"
    assert cg_upstream.calls[0].headers["authorization"] == "Bearer sk-fake"


async def test_missing_usage_charges_the_estimate(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="x" * 3000, include_usage=False))
    response = await async_client.post(
        CHAT, json=body(max_tokens=5000, content="y" * 300), headers=cg_funded_user.headers
    )
    assert response.status_code == 200
    prompt = pricing.estimate_prompt_tokens(["y" * 300])
    completion = pricing.estimate_prompt_tokens(["x" * 3000])
    assert Decimal(response.headers["X-Creditgate-Credits-Charged"]) == expected_charge(prompt, completion)


async def test_free_model_charges_nothing(async_client: httpx.AsyncClient, cg_funded_user: TestUser) -> None:
    response = await async_client.post(CHAT, json=body("free-model"), headers=cg_funded_user.headers)
    assert response.status_code == 200
    assert response.headers["X-Creditgate-Credits-Charged"] == "0.00"
    assert await balance(async_client, cg_funded_user) == Decimal("1000.00")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer cg_wrong"}, {"Authorization": "Basic abc"}])
async def test_missing_or_invalid_key_is_401(async_client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await async_client.post(CHAT, json=body(), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] == (
        "missing_api_key" if "Bearer" not in headers.get("Authorization", "") else "invalid_api_key"
    )


async def test_unknown_model_names_the_list_endpoint(async_client: httpx.AsyncClient, cg_api_key: str) -> None:
    response = await async_client.post(CHAT, json=body("nope"), headers={"Authorization": f"Bearer {cg_api_key}"})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"  # as OpenAI answers an unknown model
    assert response.json()["error"]["code"] == "model_not_found"
    assert "/catalog/models" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"model": "test-model", "messages": []},
        {"model": "test-model", "messages": [{"role": "wizard", "content": "x"}]},
        {"model": "test-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        {"model": "test-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9},
        {"model": "dall-e-3", "messages": [{"role": "user", "content": "x"}]},
        {"model": "test-model", "messages": "hi"},
    ],
)
async def test_bad_input_is_400_in_openais_shape_and_charges_nothing(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, payload: dict[str, object]
) -> None:
    response = await async_client.post(CHAT, json=payload, headers=cg_funded_user.headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_request")
    assert error["message"]
    assert "param" in error
    assert cg_upstream.calls == []
    assert await balance(async_client, cg_funded_user) == Decimal("1000.00")


async def test_malformed_json_body_is_400(async_client: httpx.AsyncClient, cg_api_key: str) -> None:
    headers = {"Authorization": f"Bearer {cg_api_key}", "Content-Type": "application/json"}
    response = await async_client.post(CHAT, content=b"{not json", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_insufficient_credits_is_402_with_what_is_affordable(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_upstream: FakeProvider
) -> None:
    user = await cg_user_factory(credits="1.00")
    response = await async_client.post(CHAT, json=body(max_tokens=50_000), headers=user.headers)
    assert response.status_code == 402
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_credits", "insufficient_credits")
    assert error["balance"] == "1.00"
    assert Decimal(error["required"]) > Decimal(1)
    affordable = error["max_affordable_tokens"]
    assert 0 < affordable < 50_000
    assert cg_upstream.calls == []
    retry = await async_client.post(CHAT, json=body(max_tokens=affordable), headers=user.headers)
    assert retry.status_code == 200, retry.text
    too_many = await async_client.post(CHAT, json=body(max_tokens=affordable + 200), headers=user.headers)
    assert too_many.status_code == 402


async def test_client_error_from_upstream_is_not_failed_over(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Fault.status_code(400))
    response = await async_client.post(CHAT, json=body(), headers=cg_funded_user.headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upstream_rejected"
    assert await balance(async_client, cg_funded_user) == Decimal("1000.00")


@pytest.mark.critical
@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_concurrent_requests_never_overdraw(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_upstream: FakeProvider
) -> None:
    """50 simultaneous requests that each hold 1/10 of the balance: exactly 10 are served."""
    per_request = expected_charge(pricing.estimate_prompt_tokens(["hello"]), 1000)
    user = await cg_user_factory(credits=per_request * 10)
    cg_upstream.gate = asyncio.Event()
    cg_upstream.default = Reply(prompt_tokens=5, completion_tokens=500)

    tasks = [
        asyncio.create_task(async_client.post(CHAT, json=body(max_tokens=1000), headers=user.headers))
        for _ in range(50)
    ]
    while len(cg_upstream.calls) < 10 or sum(t.done() for t in tasks) < 40:
        await asyncio.sleep(0.01)
    cg_upstream.gate.set()
    statuses = sorted(r.status_code for r in await asyncio.gather(*tasks))
    assert statuses == [200] * 10 + [402] * 40
    assert len(cg_upstream.calls) == 10
    assert await balance(async_client, user) == per_request * 10 - expected_charge(5, 500) * 10


async def test_usage_above_the_hold_is_charged_from_the_balance(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    """An upstream that served more than the hold bounded (issue 26, F2) is charged in full while the balance
    lasts: the hold is a reservation, not a price cap."""
    cg_upstream.push(Reply(prompt_tokens=50_000, completion_tokens=900))
    response = await async_client.post(CHAT, json=body(max_tokens=1000), headers=cg_funded_user.headers)
    full = expected_charge(50_000, 900)
    assert full > expected_charge(pricing.estimate_prompt_tokens(["hello"]), 1000)  # more than was held
    assert Decimal(response.headers["X-Creditgate-Credits-Charged"]) == full
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - full


async def test_usage_the_balance_cannot_pay_takes_it_to_zero_and_is_recorded_as_unrecovered(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_upstream: FakeProvider, cg_runtime: object
) -> None:
    """Beyond the balance nothing more can be taken: the account ends at zero (never below) and the shortfall is
    on the usage record, never silently dropped."""
    from sqlalchemy import select

    from creditgate.db.models import UsageRecord

    user = await cg_user_factory(credits=5)
    cg_upstream.push(Reply(prompt_tokens=500_000, completion_tokens=900))
    response = await async_client.post(CHAT, json=body(max_tokens=1000), headers=user.headers)
    assert response.status_code == 200
    assert Decimal(response.headers["X-Creditgate-Credits-Charged"]) == Decimal(5)
    assert await balance(async_client, user) == Decimal(0)
    async with cg_runtime.sessionmaker() as session:  # type: ignore[attr-defined]
        record = (await session.execute(select(UsageRecord.credits, UsageRecord.unrecovered))).one()
    assert record.credits == 500
    assert record.unrecovered == int(expected_charge(500_000, 900) * 100) - 500
