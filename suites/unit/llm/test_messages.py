"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's auth, errors, usage — native or translated."""

from __future__ import annotations

import json
from decimal import Decimal

import anthropic
import httpx
import httpx2
import pytest
from fastapi import FastAPI

from creditgate.catalog import pricing
from creditgate.catalog.service import Catalog, ModelConfig, ModelRoute, ProviderConfig
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply
from suites.unit.llm.test_chat import balance, expected_charge
from suites.unit.llm.test_chat import body as chat_body

MESSAGES = "/v1/messages"
CHAT_PATH = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def cg_catalog() -> Catalog:
    """The test catalog plus ``claude-native`` on an Anthropic-style provider (the same fake answers it)."""
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
    either = claude.model_copy(
        update={"id": "claude-either", "providers": (*claude.providers, ModelRoute(provider="fake"))}
    )
    return Catalog(providers=(*base.providers, native), models=(*base.models, claude, either))


def claude_charge(prompt: int, completion: int) -> Decimal:
    model = ModelConfig(
        id="c", input_per_1k=Decimal("0.003"), output_per_1k=Decimal("0.015"), providers=(ModelRoute(provider="x"),)
    )
    return pricing.credits_for(
        model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        margin=Decimal("1.5"),
        credit_value_usd=Decimal("0.01"),
        increment=Decimal("0.1"),
    )


def sdk(cg_app: FastAPI, key: str) -> anthropic.AsyncAnthropic:
    # The anthropic SDK runs on httpx2 (its own fork of httpx): give it httpx2's ASGI transport.
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=cg_app), base_url="http://gateway.test")
    return anthropic.AsyncAnthropic(base_url="http://gateway.test", api_key=key, http_client=client, max_retries=0)


async def last_usage(client: httpx.AsyncClient, user: TestUser) -> dict[str, object]:
    rows = (await client.get("/user/usage", headers=user.headers)).json()["data"]
    return dict(rows[0])


def anthropic_headers(key: str) -> dict[str, str]:
    return {"x-api-key": key, "anthropic-version": "2023-06-01"}


async def test_messages_translated_to_an_openai_upstream(
    async_client: httpx.AsyncClient, cg_app: FastAPI, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="translated", prompt_tokens=30, completion_tokens=5))
    message = await sdk(cg_app, cg_funded_user.key).messages.create(
        model="test-model",
        max_tokens=100,
        system="be brief",
        messages=HI,
        stop_sequences=["END"],
        extra_body={"temperature": 0.5},  # the newest SDKs no longer take it as an argument
    )
    assert message.content[0].text == "translated"  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (30, 5)
    assert message.stop_reason == "end_turn"
    sent = cg_upstream.calls[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"][0] == {"role": "system", "content": "be brief"}
    assert (sent.body["stop"], sent.body["temperature"], sent.body["max_tokens"]) == (["END"], 0.5, 100)
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - expected_charge(30, 5)


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
    assert await balance(async_client, cg_funded_user) == Decimal("999.30")


@pytest.mark.parametrize("model", ["test-model", "claude-native"])
async def test_streamed_usage_equals_what_is_charged(
    async_client: httpx.AsyncClient, cg_app: FastAPI, cg_funded_user: TestUser, cg_upstream: FakeProvider, model: str
) -> None:
    """The SDK's final usage is the upstream's — translated (final message_delta) or native (passed through)."""
    cg_upstream.push(Reply(content="streamed words here", prompt_tokens=6000, completion_tokens=3))
    async with sdk(cg_app, cg_funded_user.key).messages.stream(
        model=model, max_tokens=50, messages=[{"role": "user", "content": "word " * 4000}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "streamed words here"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (6000, 3)
    assert final.model == model
    row = await last_usage(async_client, cg_funded_user)
    assert (row["prompt_tokens"], row["completion_tokens"], row["outcome"]) == (6000, 3, "ok")
    charge = expected_charge(6000, 3) if model == "test-model" else claude_charge(6000, 3)
    assert Decimal(str(row["credits"])) == charge
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - charge


@pytest.mark.parametrize("model", ["test-model", "claude-native"])
async def test_cut_stream_ends_in_an_error_event_and_charges_what_was_delivered(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, model: str
) -> None:
    cg_upstream.push(Fault.cut_stream(after_chunks=2))
    request = {"model": model, "max_tokens": 100, "messages": HI, "stream": True}
    response = await async_client.post(MESSAGES, json=request, headers=anthropic_headers(cg_funded_user.key))
    assert response.status_code == 200
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "error"
    assert not any(e["type"] == "message_stop" for e in events)
    row = await last_usage(async_client, cg_funded_user)
    estimate = pricing.estimate_prompt_tokens(["", "hi"])
    assert (row["prompt_tokens"], row["outcome"]) == (estimate, "cut")
    assert row["completion_tokens"] == pricing.estimate_prompt_tokens(["Hello from"])


async def test_x_api_key_authenticates_and_errors_use_anthropics_envelope(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_upstream: FakeProvider
) -> None:
    rich, poor = await cg_user_factory(credits=100), await cg_user_factory(credits="0.01")
    request = {"model": "test-model", "max_tokens": 100, "messages": HI}
    ok = await async_client.post(MESSAGES, json=request, headers=anthropic_headers(rich.key))
    assert ok.status_code == 200, ok.text
    assert ok.json()["type"] == "message"

    missing = await async_client.post(MESSAGES, json=request, headers={"anthropic-version": "2023-06-01"})
    wrong = await async_client.post(MESSAGES, json=request, headers=anthropic_headers("cg_wrong"))
    unknown = await async_client.post(MESSAGES, json={**request, "model": "nope"}, headers=anthropic_headers(rich.key))
    broke = await async_client.post(MESSAGES, json=request, headers=anthropic_headers(poor.key))
    seen = [(r.status_code, r.json()["type"], r.json()["error"]["type"], r.json()["error"]["code"]) for r in
            (missing, wrong, unknown, broke)]  # fmt: skip
    assert seen == [
        (401, "error", "authentication_error", "missing_api_key"),
        (401, "error", "authentication_error", "invalid_api_key"),
        (404, "error", "not_found_error", "model_not_found"),
        (402, "error", "billing_error", "insufficient_credits"),
    ]
    assert broke.json()["error"]["balance"] == "0.01"
    assert broke.json()["error"]["max_affordable_tokens"] == 0
    assert len(cg_upstream.calls) == 1


async def test_messages_bad_input_is_400_in_anthropics_envelope(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    for body in (
        {"model": "test-model", "messages": HI},
        {"model": "test-model", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]},
        {"model": "test-model", "max_tokens": 10**9, "messages": HI},
        {"model": "dall-e-3", "max_tokens": 10, "messages": HI},
    ):
        response = await async_client.post(MESSAGES, json=body, headers=cg_funded_user.headers)
        assert response.status_code == 400, body
        assert response.json()["type"] == "error"
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert cg_upstream.calls == []
    assert await balance(async_client, cg_funded_user) == Decimal("1000.00")


async def test_anthropic_rate_limit_headers_on_every_answer(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    request = {"model": "test-model", "max_tokens": 100, "messages": HI}
    first = await async_client.post(MESSAGES, json=request, headers=cg_funded_user.headers)
    streamed = await async_client.post(MESSAGES, json={**request, "stream": True}, headers=cg_funded_user.headers)
    for response, calls in ((first, 1), (streamed, 2)):
        limit = int(response.headers["anthropic-ratelimit-requests-limit"])
        assert int(response.headers["anthropic-ratelimit-requests-remaining"]) == limit - calls
        assert response.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        assert response.headers["X-RateLimit-Limit"] == str(limit)


async def test_native_upstream_failure_fails_over_to_an_openai_style_provider(
    async_client: httpx.AsyncClient, cg_app: FastAPI, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Fault.status_code(529), Reply(content="from the backup", prompt_tokens=9, completion_tokens=4))
    message = await sdk(cg_app, cg_funded_user.key).messages.create(model="claude-either", max_tokens=50, messages=HI)
    assert message.content[0].text == "from the backup"  # type: ignore[union-attr]
    assert [c.path for c in cg_upstream.calls] == ["/v1/messages", "/v1/chat/completions"]
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - claude_charge(9, 4)


async def test_count_tokens_asks_a_native_upstream_and_is_free(
    async_client: httpx.AsyncClient, cg_app: FastAPI, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    prompt = [{"role": "user", "content": "count these words please"}]
    counted = await sdk(cg_app, cg_funded_user.key).messages.count_tokens(
        model="claude-native", system="be brief", messages=prompt
    )
    message = await sdk(cg_app, cg_funded_user.key).messages.create(
        model="claude-native", system="be brief", max_tokens=20, messages=prompt
    )
    assert counted.input_tokens == message.usage.input_tokens  # the upstream's own count
    assert cg_upstream.calls[0].path == "/v1/messages/count_tokens"
    assert cg_upstream.calls[0].body == {"model": "claude-x", "messages": prompt, "system": "be brief"}
    rows = (await async_client.get("/user/usage", headers=cg_funded_user.headers)).json()["data"]
    assert len(rows) == 1  # only the message was metered


async def test_count_tokens_without_a_native_upstream_is_the_estimate(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    body = {"model": "test-model", "messages": HI}
    response = await async_client.post(f"{MESSAGES}/count_tokens", json=body, headers=cg_funded_user.headers)
    assert response.status_code == 200
    assert response.json() == {"input_tokens": pricing.estimate_prompt_tokens(["", "hi"])}
    assert response.headers["X-Creditgate-Token-Count"] == "estimate"
    assert cg_upstream.calls == []
    missing = await async_client.post(f"{MESSAGES}/count_tokens", json={**body, "model": "nope"})
    assert (missing.status_code, missing.json()["error"]["type"]) == (401, "authentication_error")


@pytest.mark.parametrize(
    ("path", "request_body", "last_event"),
    [
        (CHAT_PATH, {**chat_body(), "stream": True}, "[DONE]"),  # the upstream's own [DONE], passed through
        (CHAT_PATH, {**chat_body(model="claude-native"), "stream": True}, "[DONE]"),  # built by the gateway
        (MESSAGES, {**chat_body(), "stream": True}, "message_stop"),  # translated
        (MESSAGES, {**chat_body(model="claude-native"), "stream": True}, "message_stop"),  # passed through
    ],
    ids=["openai-passthrough", "openai-from-anthropic", "anthropic-from-openai", "anthropic-passthrough"],
)
async def test_the_end_of_a_stream_is_sent_only_after_the_charge_commits(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_upstream: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    request_body: dict[str, object],
    last_event: str,
) -> None:
    """A worker killed between the two must leave a client that saw a broken stream, not a free answer."""
    from creditgate.llm import relay
    from creditgate.llm.metering import Meter

    order: list[str] = []
    real_settle, real_stream = Meter.settle, relay.stream

    async def settle(self: Meter, **kwargs: object) -> Decimal:
        charged = await real_settle(self, **kwargs)  # type: ignore[arg-type]
        order.append("settled")
        return charged

    async def stream(*args: object, **kwargs: object) -> relay.Streamed:
        streamed = await real_stream(*args, **kwargs)  # type: ignore[arg-type]

        async def chunks():  # type: ignore[no-untyped-def]
            async for chunk in streamed.chunks:
                for line in chunk.decode().splitlines():
                    if line.startswith("data: "):
                        data = line.removeprefix("data: ")
                        order.append(data if data == "[DONE]" else json.loads(data).get("type", "chunk"))
                yield chunk

        return relay.Streamed(chunks(), streamed.headers)

    monkeypatch.setattr(Meter, "settle", settle)
    monkeypatch.setattr(relay, "stream", stream)
    cg_upstream.push(Reply(content="one two", prompt_tokens=10, completion_tokens=20))

    response = await async_client.post(path, json=request_body, headers=cg_funded_user.headers)

    assert response.status_code == 200
    assert order[-1] == last_event
    assert "settled" in order[:-1]  # before the closing event, not after it
    assert "content_block_delta" not in order[order.index("settled") :]
