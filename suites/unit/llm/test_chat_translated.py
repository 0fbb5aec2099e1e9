"""POST /v1/chat/completions served by an Anthropic-style provider: both directions through the adapters."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai

from creditgate.testing.gateway import TestUser
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply
from suites.unit.llm.test_chat import balance
from suites.unit.llm.test_messages import cg_catalog, claude_charge, last_usage

__all__ = ["cg_catalog"]  # the catalog with claude-native (an Anthropic-style provider)
CHAT = "/v1/chat/completions"


def sdk(client: httpx.AsyncClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key=key, http_client=client, max_retries=0)


async def test_openai_client_gets_an_anthropic_answer_in_openais_shape(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="from claude", prompt_tokens=40, completion_tokens=6))
    completion = await sdk(async_client, cg_funded_user.key).chat.completions.create(
        model="claude-native",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        max_tokens=64,
        temperature=1.7,
        stop="END",
    )
    assert completion.choices[0].message.content == "from claude"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (40, 6)
    sent = cg_upstream.calls[0]
    assert sent.path == "/v1/messages"
    assert sent.body == {
        "messages": [{"role": "user", "content": "hi"}],
        "system": "be brief",
        "temperature": 1.0,  # OpenAI's 0–2 clamped to Anthropic's 0–1
        "stop_sequences": ["END"],
        "model": "claude-x",
        "max_tokens": 64,
        "stream": False,
    }
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - claude_charge(40, 6)


async def test_openai_stream_from_an_anthropic_stream_reports_and_charges_its_usage(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="one two three", prompt_tokens=70, completion_tokens=3))
    stream = await sdk(async_client, cg_funded_user.key).chat.completions.create(
        model="claude-native",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    assert (text, finish) == ("one two three", "stop")
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (70, 3)
    row = await last_usage(async_client, cg_funded_user)
    assert (row["prompt_tokens"], row["completion_tokens"], row["outcome"]) == (70, 3, "ok")
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - claude_charge(70, 3)


async def test_cut_anthropic_stream_ends_the_openai_stream_without_done(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Fault.cut_stream(after_chunks=1))
    request = {"model": "claude-native", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = await async_client.post(CHAT, json=request, headers=cg_funded_user.headers)
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in data
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in map(json.loads, data)) == "Hello"
    assert (await last_usage(async_client, cg_funded_user))["outcome"] == "cut"


async def test_malformed_anthropic_answer_charges_nothing(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Fault.malformed())
    request = {"model": "claude-native", "messages": [{"role": "user", "content": "hi"}]}
    response = await async_client.post(CHAT, json=request, headers=cg_funded_user.headers)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "provider_unavailable"
    assert await balance(async_client, cg_funded_user) == Decimal("1000.00")
