"""GET /v1/models and /v1/models/{id}: the models the caller may use, in OpenAI's or Anthropic's shape."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest
from fastapi import FastAPI

from creditgate.catalog.service import Catalog, ModelConfig, ModelRoute, ProviderConfig
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import TestUser
from suites.unit.llm.test_messages import sdk as anthropic_sdk


@pytest.fixture
def cg_catalog() -> Catalog:
    """The test catalog plus ``keyless-model``, whose only provider has no API key configured."""
    base = catalog_for_tests()
    keyless = ProviderConfig(name="keyless", base_url="http://keyless.test/v1", api_key_env="CG_TEST_UNSET_KEY")
    model = ModelConfig(id="keyless-model", providers=(ModelRoute(provider="keyless"),))
    return Catalog(providers=(*base.providers, keyless), models=(*base.models, model))


def openai_sdk(client: httpx.AsyncClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key=key, http_client=client, max_retries=0)


async def test_openai_sdk_lists_and_retrieves_only_usable_models(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    api = openai_sdk(async_client, cg_funded_user.key)
    ids = [m.id async for m in api.models.list()]
    assert ids == [m.id for m in catalog_for_tests().models]  # every keyed model, in catalog order
    assert "keyless-model" not in ids
    model = await api.models.retrieve("test-model")
    assert (model.id, model.object, model.owned_by) == ("test-model", "model", "creditgate-tests")
    for missing in ("keyless-model", "no-such-model"):
        with pytest.raises(openai.NotFoundError) as info:
            await api.models.retrieve(missing)
        assert info.value.code == "model_not_found"


async def test_a_users_own_provider_key_makes_its_models_usable(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    stored = await async_client.post(
        "/user/provider-keys",
        json={"provider": "keyless", "api_key": "sk-own-12345678"},
        headers=cg_funded_user.headers,
    )
    assert stored.status_code == 200, stored.text
    ids = [m.id async for m in openai_sdk(async_client, cg_funded_user.key).models.list()]
    assert "keyless-model" in ids


async def test_anthropic_sdk_pages_through_the_same_models(
    async_client: httpx.AsyncClient, cg_app: FastAPI, cg_funded_user: TestUser
) -> None:
    api = anthropic_sdk(cg_app, cg_funded_user.key)
    ids = [m.id async for m in api.models.list(limit=3)]
    assert ids == [m.id for m in catalog_for_tests().models]
    first = await api.models.list(limit=3)
    assert (len(first.data), first.has_more, first.last_id) == (3, True, ids[2])
    back = await api.models.list(limit=2, before_id=ids[3])
    assert [m.id for m in back.data] == ids[1:3]
    model = await api.models.retrieve("test-model")
    assert (model.id, model.type, model.display_name) == ("test-model", "model", "test-model")
    with pytest.raises(anthropic.NotFoundError) as info:
        await api.models.retrieve("keyless-model")
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_models_need_a_key_in_either_protocol(async_client: httpx.AsyncClient) -> None:
    plain = await async_client.get("/v1/models")
    assert (plain.status_code, plain.json()["error"]["code"]) == (401, "missing_api_key")
    anthropic_style = await async_client.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert anthropic_style.status_code == 401
    assert anthropic_style.json()["type"] == "error"
    assert anthropic_style.json()["error"]["type"] == "authentication_error"
