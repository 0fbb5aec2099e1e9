"""Raw HTTP in each vendor's documented curl form against a real gateway, and the fake upstream checked
against the anthropic SDK (the fake must stay as faithful as the gateway it tests)."""

from __future__ import annotations

import anthropic
import httpx
import httpx2
import pytest

from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply
from suites.contract.conftest import ContractGateway

pytestmark = pytest.mark.contract


def test_openais_curl_form(contract_gateway: ContractGateway) -> None:
    """curl $BASE/v1/chat/completions -H "Content-Type: application/json" -H "Authorization: Bearer $KEY" -d …"""
    key = contract_gateway.new_key(10)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    body = b'{"model": "test-model", "messages": [{"role": "user", "content": "Hello!"}]}'
    with httpx.Client(base_url=contract_gateway.server.url) as http:
        response = http.post("/v1/chat/completions", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["object"] == "chat.completion"
        assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(response.headers)
        models = http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert models.json()["object"] == "list"
        refused = http.post("/v1/chat/completions", content=b"{}", headers=headers)
        assert refused.status_code == 400
        assert set(refused.json()["error"]) >= {"message", "type", "param", "code"}


def test_anthropics_curl_form(contract_gateway: ContractGateway) -> None:
    """curl $BASE/v1/messages --header "x-api-key: $KEY" --header "anthropic-version: 2023-06-01" \\
    --header "content-type: application/json" --data …"""
    key = contract_gateway.new_key(10)
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    body = b'{"model": "claude-native", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello, world"}]}'
    with httpx.Client(base_url=contract_gateway.server.url) as http:
        response = http.post("/v1/messages", content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["type"] == "message"
        assert int(response.headers["anthropic-ratelimit-requests-remaining"]) >= 0
        counted = http.post(
            "/v1/messages/count_tokens",
            content=b'{"model": "claude-native", "messages": [{"role": "user", "content": "Hello, world"}]}',
            headers=headers,
        )
        assert counted.json()["input_tokens"] == response.json()["usage"]["input_tokens"]
        models = http.get("/v1/models", headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
        assert {"data", "has_more", "first_id", "last_id"} <= set(models.json())
        refused = http.post("/v1/messages", content=b'{"model": "claude-native"}', headers=headers)
        assert (refused.status_code, refused.json()["type"]) == (400, "error")
        assert refused.json()["error"]["type"] == "invalid_request_error"


async def test_fake_provider_speaks_anthropic() -> None:
    fake = FakeProvider()
    fake.push(Reply(content="a b c", prompt_tokens=11, completion_tokens=3))
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=fake.app), base_url="http://fake")
    api = anthropic.AsyncAnthropic(base_url="http://fake", api_key="k", http_client=client, max_retries=0)
    messages = [{"role": "user", "content": "count me in"}]
    async with api.messages.stream(model="m", max_tokens=10, messages=messages) as stream:  # type: ignore[arg-type]
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert (text, final.usage.input_tokens, final.usage.output_tokens) == ("a b c", 11, 3)
    counted = await api.messages.count_tokens(model="m", messages=messages)  # type: ignore[arg-type]
    message = await api.messages.create(model="m", max_tokens=10, messages=messages)  # type: ignore[arg-type]
    assert counted.input_tokens == message.usage.input_tokens
    fake.push(Fault.status_code(529))
    with pytest.raises(anthropic.APIStatusError) as info:
        await api.messages.create(model="m", max_tokens=10, messages=messages)  # type: ignore[arg-type]
    assert info.value.body == {"type": "error", "error": {"type": "api_error", "message": "fake upstream error 529"}}
