"""The official openai SDK, pointed at the gateway, parses what it gets — answers and errors."""

from __future__ import annotations

import httpx
import openai
import pytest

from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply

pytestmark = pytest.mark.contract


def sdk(client: httpx.AsyncClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key=key, http_client=client, max_retries=0)


async def test_sdk_parses_a_completion(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="parsed", prompt_tokens=3, completion_tokens=2))
    completion = await sdk(async_client, cg_funded_user.key).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}], max_tokens=20
    )
    assert completion.choices[0].message.content == "parsed"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 5
    assert completion.model == "test-model"


async def test_sdk_raises_typed_errors(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_upstream: FakeProvider
) -> None:
    poor = await cg_user_factory(credits="0.05")
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        await sdk(async_client, "cg_nope").chat.completions.create(model="test-model", messages=messages)
    with pytest.raises(openai.NotFoundError):
        await sdk(async_client, poor.key).chat.completions.create(model="no-such-model", messages=messages)
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(async_client, poor.key).chat.completions.create(model="test-model", messages=messages)
    assert info.value.status_code == 402
    rich = await cg_user_factory(credits=100)
    cg_upstream.push(Fault.status_code(503))
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(async_client, rich.key).chat.completions.create(model="test-model", messages=messages)
    assert info.value.status_code == 502
    assert (await async_client.get("/user/balance", headers=rich.headers)).json()["balance"] == "100.00"


async def test_fake_provider_speaks_openai_too(cg_upstream: FakeProvider) -> None:
    """The fake stays faithful: the SDK parses its JSON and its stream with the usage chunk."""
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=cg_upstream.app), base_url="http://fake")
    api = openai.AsyncOpenAI(base_url="http://fake/v1", api_key="k", http_client=client, max_retries=0)
    done = await api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content == "Hello from the fake provider."
    stream = await api.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "Hello from the fake provider."
    assert usage is not None
    assert usage.completion_tokens > 0
