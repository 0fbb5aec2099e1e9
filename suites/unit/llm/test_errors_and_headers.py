"""OpenAI's error shape (with a stable ``code``) and the rate-limit headers on /v1/chat/completions."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from creditgate.runtime import Runtime
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Reply
from suites.unit.llm.test_chat import CHAT, body


async def test_credit_refusals_keep_their_body_and_get_a_code(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory
) -> None:
    user = await cg_user_factory(credits="0.50")
    response = await async_client.post(CHAT, json=body(max_tokens=50_000), headers=user.headers)
    assert response.status_code == 402
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code", "balance", "required", "max_affordable_tokens"}
    assert (error["code"], error["param"], error["balance"]) == ("insufficient_credits", None, "0.50")


@pytest.mark.parametrize("stream", [False, True])
async def test_rate_limit_headers_on_every_metered_answer(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, stream: bool
) -> None:
    cg_upstream.default = Reply(prompt_tokens=3, completion_tokens=2)
    remaining = []
    for _ in range(2):
        response = await async_client.post(CHAT, json={**body(), "stream": stream}, headers=cg_funded_user.headers)
        assert response.status_code == 200
        assert int(response.headers["X-RateLimit-Limit"]) == 700  # the trial plan
        assert int(response.headers["X-RateLimit-Reset"]) > 0
        assert "anthropic-ratelimit-requests-limit" not in response.headers
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == [699, 698]


class _Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self) -> _Failing:
        return self

    async def __aenter__(self) -> None:
        raise self.error

    async def __aexit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize(
    ("method", "path", "shape"),
    [("GET", "/user/balance", "gateway"), ("POST", "/v1/chat/completions", "openai")],
)
async def test_a_database_that_cannot_be_reached_is_a_503_to_retry_not_a_500(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    shape: str,
) -> None:
    monkeypatch.setattr(
        cg_runtime, "sessionmaker", _Failing(asyncpg.ConnectionDoesNotExistError("closed mid-operation"))
    )
    request = body() if method == "POST" else None
    response = await async_client.request(method, path, json=request, headers=cg_funded_user.headers)
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    error = response.json()["error"]
    assert error["code"] == "database_unavailable"
    assert error["type"] == "service_unavailable"
    assert ("param" in error) is (shape == "openai")  # each route's own error shape


async def test_a_statement_the_database_refuses_is_still_a_500(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cg_runtime, "sessionmaker", _Failing(asyncpg.UniqueViolationError("duplicate key")))
    response = await async_client.get("/user/balance", headers=cg_funded_user.headers)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "Retry-After" not in response.headers


async def test_the_schema_documents_400_not_422_for_invalid_input_on_the_vendors_routes(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    schema = (await async_client.get("/openapi.json")).json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "400" in chat
    assert "422" not in chat
    answered = await async_client.post(CHAT, json={"model": "test-model"}, headers=cg_funded_user.headers)
    assert answered.status_code == 400  # what the schema says
    assert "422" in schema["paths"]["/orgs"]["post"]["responses"]  # the gateway's own routes keep 422
