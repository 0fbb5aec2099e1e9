"""End to end on real Postgres, real uvicorn workers and the fake provider on a real port."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from decimal import Decimal

import httpx
import pytest

from creditgate.catalog import pricing
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import GatewayFactory, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Reply

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]
CHAT = "/v1/chat/completions"


async def test_simultaneous_requests_spend_the_balance_exactly(
    cg_live_server_factory: GatewayFactory, cg_user_factory: UserFactory, cg_upstream: FakeProvider
) -> None:
    """Ten simultaneous requests, each holding (and using) a tenth of the balance, over two workers."""
    server = cg_live_server_factory(workers=2)
    prompt = pricing.estimate_prompt_tokens(["hello"])
    each = pricing.credits_for(
        catalog_for_tests().model("test-model"),
        prompt_tokens=prompt,
        completion_tokens=1000,
        margin=Decimal("1.5"),
        credit_value_usd=Decimal("0.01"),
        increment=Decimal("0.1"),
    )
    user = await cg_user_factory(credits=each * 10)
    cg_upstream.default = Reply(prompt_tokens=prompt, completion_tokens=1000)
    body = {"model": "test-model", "max_tokens": 1000, "messages": [{"role": "user", "content": "hello"}]}
    async with httpx.AsyncClient(base_url=server.url, headers=user.headers, timeout=30) as client:
        responses = await asyncio.gather(*(client.post(CHAT, json=body) for _ in range(10)))
        assert [r.status_code for r in responses] == [200] * 10
        assert {r.headers["X-Creditgate-Credits-Charged"] for r in responses} == {f"{each:.2f}"}
        assert (await client.get("/user/balance")).json()["balance"] == "0.00"
        again = await client.post(CHAT, json=body)
        assert again.status_code == 402
        summary = (await client.get("/user/transactions/summary")).json()
        assert summary["total_spent"] == f"{each * 10:.2f}"
        assert summary["net_balance"] == "0.00"


def test_smoke_suite_passes_against_a_live_server(cg_live_server_factory: GatewayFactory, cg_api_key: str) -> None:
    """The deploy pipeline's smoke suite, run as a pipeline would, so it never rots."""
    server = cg_live_server_factory()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/smoke", "-q", "-p", "no:cacheprovider", "--base-url", server.url],
        env={**os.environ, "SMOKE_API_KEY": cg_api_key},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout
