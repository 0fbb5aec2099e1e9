"""POST /v1/images/generations and POST /v1/messages (Anthropic shape, native or translated)."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import httpx
import httpx2
import pytest
from fastapi import FastAPI

from creditgate.catalog.service import Catalog, ModelConfig, ModelRoute, ProviderConfig
from creditgate_harness.catalog import catalog_for_tests
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply
from creditgate_harness.gateway import TestUser

IMAGES = "/v1/images/generations"


@pytest.fixture
def cg_catalog() -> Catalog:
    base = catalog_for_tests()
    native = ProviderConfig(
        name="anthropic-native", kind="anthropic", base_url="http://anthropic.test/v1", api_key="ak"
    )
    claude = ModelConfig(
        id="claude-native",
        input_per_1k=Decimal("0.003"),
        output_per_1k=Decimal("0.015"),
        providers=(ModelRoute(provider="anthropic-native", model="claude-x"),),
    )
    return Catalog(providers=(*base.providers, native), models=(*base.models, claude))


async def test_images_charged_per_image(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    response = await async_client.post(IMAGES, json={"prompt": "a cat", "n": 2}, headers=cg_funded_user.headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2
    assert response.json()["data"][0]["url"].startswith("https://")
    # 2 × $0.04 × 1.5 / $0.01 = 12 credits
    assert response.headers["X-Creditgate-Credits-Charged"] == "12.00"
    assert (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"] == "988.00"


@pytest.mark.parametrize(
    "body",
    [{"prompt": "x", "size": "13x13"}, {"prompt": "x", "n": 9}, {"prompt": ""}, {"prompt": "x", "model": "test-model"}],
)
async def test_bad_image_requests_are_400(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, body: dict[str, object]
) -> None:
    response = await async_client.post(IMAGES, json=body, headers=cg_funded_user.headers)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"] == "1000.00"


async def test_failed_image_generation_is_free(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.default = Fault.status_code(500)
    assert (await async_client.post(IMAGES, json={"prompt": "x"}, headers=cg_funded_user.headers)).status_code == 502
    assert (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"] == "1000.00"


def sdk(cg_app: FastAPI, key: str) -> anthropic.AsyncAnthropic:
    # The anthropic SDK runs on httpx2 (its own fork of httpx): give it httpx2's ASGI transport.
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=cg_app), base_url="http://gateway.test")
    return anthropic.AsyncAnthropic(base_url="http://gateway.test", api_key=key, http_client=client, max_retries=0)


async def test_messages_translated_to_an_openai_upstream(
    async_client: httpx.AsyncClient, cg_app: FastAPI, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="translated", prompt_tokens=30, completion_tokens=5))
    message = await sdk(cg_app, cg_funded_user.key).messages.create(
        model="test-model", max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == "translated"  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (30, 5)
    assert message.stop_reason == "end_turn"
    sent = cg_upstream.calls[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"][0] == {"role": "system", "content": "be brief"}


async def test_messages_to_a_native_anthropic_upstream(
    async_client: httpx.AsyncClient, cg_app: FastAPI, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="native", prompt_tokens=1000, completion_tokens=100))
    message = await sdk(cg_app, cg_funded_user.key).messages.create(
        model="claude-native", max_tokens=200, messages=[{"role": "user", "content": "word " * 1000}]
    )
    assert message.content[0].text == "native"  # type: ignore[union-attr]
    assert message.model == "claude-native"
    call = cg_upstream.calls[0]
    assert (call.path, call.headers["x-api-key"], call.body["model"]) == ("/v1/messages", "ak", "claude-x")
    # (1 × $0.003 + 0.1 × $0.015) × 1.5 / $0.01 = 0.675 → 0.7
    balance = (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"]
    assert balance == "999.30"


async def test_messages_stream_parses_in_the_anthropic_sdk(
    async_client: httpx.AsyncClient, cg_app: FastAPI, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="streamed words here", prompt_tokens=10, completion_tokens=3))
    async with sdk(cg_app, cg_funded_user.key).messages.stream(
        model="test-model", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "streamed words here"
    assert final.usage.output_tokens == 3
    charged = (await async_client.get("/user/usage", headers=cg_funded_user.headers)).json()["data"][0]
    assert (charged["prompt_tokens"], charged["completion_tokens"]) == (10, 3)


async def test_messages_bad_input_is_400_in_anthropics_envelope(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    for body in (
        {"model": "test-model", "messages": [{"role": "user", "content": "x"}]},
        {"model": "test-model", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]},
    ):
        response = await async_client.post("/v1/messages", json=body, headers=cg_funded_user.headers)
        assert response.status_code == 400
        assert response.json()["type"] == "error"
        assert response.json()["error"]["type"] == "invalid_request_error"
