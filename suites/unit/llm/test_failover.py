"""Providers are tried in catalog order; a missing key or a fault moves to the next."""

from __future__ import annotations

import httpx
import pytest

from creditgate.catalog.service import Catalog, ModelRoute, ProviderConfig
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import TestUser
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply
from suites.unit.llm.test_chat import CHAT, body


@pytest.fixture
def cg_catalog() -> Catalog:
    base = catalog_for_tests()
    providers = (
        ProviderConfig(name="primary", base_url="http://primary.test/v1", api_key="k1"),
        ProviderConfig(name="unkeyed", base_url="http://unkeyed.test/v1", api_key_env="CG_TEST_UNSET_KEY"),
        ProviderConfig(name="secondary", base_url="http://secondary.test/v1", api_key="k2"),
    )
    routes = (ModelRoute(provider="primary"), ModelRoute(provider="unkeyed"), ModelRoute(provider="secondary"))
    models = tuple(m.model_copy(update={"providers": routes}) for m in base.models)
    return Catalog(providers=providers, models=models)


async def test_failover_goes_down_the_list(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Fault.status_code(503), Reply(prompt_tokens=10, completion_tokens=10))
    response = await async_client.post(CHAT, json=body(), headers=cg_funded_user.headers)
    assert response.status_code == 200
    assert response.headers["X-Creditgate-Provider"] == "secondary"
    assert [c.headers["host"] for c in cg_upstream.calls] == ["primary.test", "secondary.test"]

    cg_upstream.default = Fault.status_code(500)
    failed = await async_client.post(CHAT, json=body(), headers=cg_funded_user.headers)
    assert failed.status_code == 502
    outcomes = [(a["provider"], a["outcome"]) for a in failed.json()["error"]["attempts"]]
    assert outcomes == [
        ("primary", "HTTP 500"),
        ("unkeyed", "no API key (CG_TEST_UNSET_KEY is not set)"),
        ("secondary", "HTTP 500"),
    ]
