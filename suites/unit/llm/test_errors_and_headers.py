"""OpenAI's error shape (with a stable ``code``) and the rate-limit headers on /v1/chat/completions."""

from __future__ import annotations

import httpx
import pytest

from creditgate_harness.fakes.providers import FakeProvider, Reply
from creditgate_harness.gateway import TestUser, UserFactory
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
