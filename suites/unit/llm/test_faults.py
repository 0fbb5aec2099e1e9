"""Every provider fault kind ends in 502 with the hold released: nothing charged."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from creditgate.runtime import Runtime
from creditgate.settings import Settings
from creditgate.testing.gateway import TestUser
from creditgate_harness.fakes.providers import FakeProvider, Fault
from suites.unit.llm.test_chat import CHAT, balance, body

FAULTS = {
    "http-500": Fault.status_code(500),
    "http-503": Fault.status_code(503),
    "rate-limited-429": Fault.rate_limited(2),
    "unauthorized-401": Fault.status_code(401),
    "timeout": Fault.hang(30),
    "malformed-json": Fault.malformed(),
}


@pytest.fixture
def cg_settings(database_url: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        sweep_interval_seconds=3600,  # type: ignore[call-arg]
        upstream_timeout_seconds=0.3,
    )


@pytest.mark.critical
@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_provider_faults_charge_nothing(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, fault: Fault
) -> None:
    cg_upstream.default = fault
    response = await async_client.post(CHAT, json=body(), headers=cg_funded_user.headers)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "provider_unavailable"
    assert [a["provider"] for a in error["attempts"]] == ["fake"]
    assert len(cg_upstream.calls) == 1
    assert await balance(async_client, cg_funded_user) == Decimal("1000.00")


async def test_response_without_choices_shape_charges_nothing(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_runtime: Runtime
) -> None:
    async def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"oops": True}]})

    cg_runtime.providers.http = httpx.AsyncClient(transport=httpx.MockTransport(broken))  # answers nonsense
    response = await async_client.post(CHAT, json=body(), headers=cg_funded_user.headers)
    assert response.status_code == 502
    assert await balance(async_client, cg_funded_user) == Decimal("1000.00")
