"""Streaming chat: SSE passthrough, usage from the final chunk, and the charging rule for every ending."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest

from creditgate.catalog import pricing
from creditgate.testing.gateway import TestUser
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply
from suites.unit.llm.test_chat import balance, body, expected_charge

pytestmark = pytest.mark.critical
CHAT = "/v1/chat/completions"
SSE_HEADERS = {"content-type": "text/event-stream"}


def events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]


async def usage_rows(client: httpx.AsyncClient, user: TestUser) -> list[dict[str, object]]:
    return list((await client.get("/user/usage", headers=user.headers)).json()["data"])


async def test_stream_relays_chunks_and_charges_the_usage_chunk(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="one two three", prompt_tokens=100, completion_tokens=700))
    response = await async_client.post(
        CHAT, json={**body(max_tokens=1000), "stream": True}, headers=cg_funded_user.headers
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    data = events(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "one two three"
    assert all(c["model"] == "test-model" for c in chunks)
    assert not any("usage" in c for c in chunks)  # the client did not ask for it
    assert cg_upstream.calls[0].body["stream_options"] == {"include_usage": True}
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - expected_charge(100, 700)
    assert (await usage_rows(async_client, cg_funded_user))[0]["outcome"] == "ok"


async def test_stream_forwards_usage_when_asked(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(prompt_tokens=10, completion_tokens=20))
    request = {**body(), "stream": True, "stream_options": {"include_usage": True}}
    response = await async_client.post(CHAT, json=request, headers=cg_funded_user.headers)
    last = json.loads(events(response)[-2])
    assert last["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}


async def test_cut_stream_charges_prompt_plus_delivered_text(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Fault.cut_stream(after_chunks=2))  # "Hello from" then nothing: no usage, no [DONE]
    response = await async_client.post(
        CHAT, json={**body(max_tokens=1000), "stream": True}, headers=cg_funded_user.headers
    )
    assert response.status_code == 200
    assert "[DONE]" not in events(response)
    delivered = "Hello from"
    prompt = pricing.estimate_prompt_tokens(["hello"])
    charge = expected_charge(prompt, pricing.estimate_prompt_tokens([delivered]))
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - charge
    assert (await usage_rows(async_client, cg_funded_user))[0]["outcome"] == "cut"


async def test_stream_without_usage_charges_the_estimate(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="a b c d", include_usage=False))
    response = await async_client.post(
        CHAT, json={**body(max_tokens=1000), "stream": True}, headers=cg_funded_user.headers
    )
    assert events(response)[-1] == "[DONE]"
    prompt = pricing.estimate_prompt_tokens(["hello"])
    charge = expected_charge(prompt, pricing.estimate_prompt_tokens(["a b c d"]))
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - charge


async def test_cut_before_any_text_charges_nothing(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Fault.cut_stream(after_chunks=0))
    await async_client.post(CHAT, json={**body(), "stream": True}, headers=cg_funded_user.headers)
    assert await balance(async_client, cg_funded_user) == Decimal("1000.00")


@pytest.mark.parametrize("fault", [Fault.status_code(503), Fault.rate_limited(1), Fault.status_code(500)])
async def test_stream_that_never_starts_charges_nothing(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, fault: Fault
) -> None:
    cg_upstream.default = fault
    response = await async_client.post(CHAT, json={**body(), "stream": True}, headers=cg_funded_user.headers)
    assert response.status_code == 502
    assert await balance(async_client, cg_funded_user) == Decimal("1000.00")


async def test_stream_rejected_by_upstream_is_400(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Fault.status_code(422))
    response = await async_client.post(CHAT, json={**body(), "stream": True}, headers=cg_funded_user.headers)
    assert response.status_code == 400
    assert await balance(async_client, cg_funded_user) == Decimal("1000.00")


async def test_sdk_parses_the_gateway_stream(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    import openai

    api = openai.AsyncOpenAI(base_url="http://gateway.test/v1", api_key=cg_funded_user.key, http_client=async_client)
    stream = await api.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        text += "".join(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage or usage
    assert text == "Hello from the fake provider."
    assert usage is not None


class _Stream(httpx.AsyncByteStream):
    def __init__(self, parts: list[bytes], *, fail: bool) -> None:
        self.parts, self.fail = parts, fail

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for part in self.parts:
            yield part
        if self.fail:
            raise httpx.ReadError("upstream connection reset")


def upstream(parts: list[bytes], *, fail: bool = False) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.MockTransport(
            lambda request: httpx.Response(200, headers=SSE_HEADERS, stream=_Stream(parts, fail=fail))
        )
    )


async def test_odd_upstream_lines_are_dropped_and_usage_is_stripped(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_runtime
) -> None:  # type: ignore[no-untyped-def]
    cg_runtime.providers.http = upstream(
        [
            b"data: not json\n\n",
            b"data: [1, 2]\n\n",
            b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": '
            b'{"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}\n\n',
            b"data: [DONE]\n\n",
        ]
    )
    response = await async_client.post(CHAT, json={**body(), "stream": True}, headers=cg_funded_user.headers)
    data = events(response)
    assert data[-1] == "[DONE]"
    assert [json.loads(d) for d in data[:-1]] == [
        {"choices": [{"index": 0, "delta": {"content": "hi"}}], "model": "test-model"}
    ]
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - expected_charge(5, 7)


async def test_upstream_connection_reset_mid_stream_charges_what_was_delivered(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_runtime
) -> None:  # type: ignore[no-untyped-def]
    cg_runtime.providers.http = upstream(
        [b'data: {"choices": [{"index": 0, "delta": {"content": "partial answer"}}]}\n\n'], fail=True
    )
    response = await async_client.post(
        CHAT, json={**body(max_tokens=1000), "stream": True}, headers=cg_funded_user.headers
    )
    assert response.status_code == 200
    prompt = pricing.estimate_prompt_tokens(["hello"])
    charge = expected_charge(prompt, pricing.estimate_prompt_tokens(["partial answer"]))
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - charge
    assert (await usage_rows(async_client, cg_funded_user))[0]["outcome"] == "cut"


async def test_stream_ending_without_done_but_with_usage_is_charged_the_usage(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_runtime
) -> None:  # type: ignore[no-untyped-def]
    cg_runtime.providers.http = upstream(
        [
            b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n',
            b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}\n\n',
        ]
    )
    await async_client.post(CHAT, json={**body(), "stream": True}, headers=cg_funded_user.headers)
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - expected_charge(3, 4)
    assert (await usage_rows(async_client, cg_funded_user))[0]["outcome"] == "ok_no_done"
