"""POST /v1/messages in Anthropic's shape: to an Anthropic-style upstream as is, or translated to OpenAI chat.

Streaming (``stream: true``) is served from an OpenAI-style upstream's SSE and re-emitted as
Anthropic's events (message_start, content_block_start/delta/stop, message_delta, message_stop),
metered by the same rules as chat streams.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from creditgate.auth.deps import PrincipalDep, RuntimeDep
from creditgate.catalog import pricing
from creditgate.catalog.service import ProviderConfig
from creditgate.errors import InvalidRequest, ProviderUnavailable
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.llm.metering import Meter

router = APIRouter(prefix="/v1", tags=["inference"])
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(str(b.get("text", "")) for b in self.content if b.get("type") == "text")


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=128)
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=2048)
    system: str | list[dict[str, Any]] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    stream: bool = False

    def system_text(self) -> str:
        if isinstance(self.system, list):
            return "".join(str(b.get("text", "")) for b in self.system)
        return self.system or ""


class MessagesResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: dict[str, int]


def _as_openai(body: MessagesRequest) -> dict[str, Any]:
    messages = [{"role": "system", "content": body.system_text()}] if body.system else []
    messages += [{"role": m.role, "content": m.text()} for m in body.messages]
    payload: dict[str, Any] = {"messages": messages, "max_tokens": body.max_tokens}
    if body.temperature is not None:
        payload["temperature"] = body.temperature
    return payload


def _valid(kind: str, body: Any) -> bool:
    if kind == "anthropic":
        return isinstance(body.get("content"), list) and isinstance(body.get("usage"), dict)
    return isinstance(body.get("choices"), list) and bool(body["choices"])


def _to_anthropic(body: dict[str, Any], model_id: str) -> dict[str, Any]:
    choice = body["choices"][0]
    usage = body.get("usage") or {}
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model_id,
        "content": [{"type": "text", "text": (choice.get("message") or {}).get("content") or ""}],
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": int(usage.get("prompt_tokens", 0)),
            "output_tokens": int(usage.get("completion_tokens", 0)),
        },
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


@router.post(
    "/messages",
    response_model=MessagesResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **ERROR_RESPONSES(400, 401, 402, 404, 422, 429, 502),
    },
)
async def messages(
    body: MessagesRequest, principal: PrincipalDep, rt: RuntimeDep, response: Response
) -> MessagesResponse | StreamingResponse:
    """Anthropic-style messages; credits held and settled exactly like chat completions."""
    model = rt.catalog.model(body.model)
    if model.per_image is not None:
        raise InvalidRequest(f"{model.id} is an image model", param="model")
    if body.max_tokens > model.max_output_tokens:
        raise InvalidRequest(f"max_tokens exceeds {model.id}'s limit of {model.max_output_tokens}", param="max_tokens")
    prompt_estimate = pricing.estimate_prompt_tokens([body.system_text()] + [m.text() for m in body.messages])
    meter = await Meter.open(rt, principal, model, prompt_estimate=prompt_estimate, max_tokens=body.max_tokens)
    keys = meter.user_keys
    if body.stream:
        return await _stream(rt, meter, body, keys)
    native = body.model_dump(exclude_none=True, exclude={"stream"})

    def build(provider: ProviderConfig) -> tuple[str, dict[str, Any]]:
        return ("/messages", native) if provider.kind == "anthropic" else ("/chat/completions", _as_openai(body))

    try:
        upstream = await rt.providers.post_json(
            model=model, build=build, timeout=rt.settings.upstream_timeout_seconds, valid=_valid, user_keys=keys
        )
        out = (
            {**upstream.body, "model": model.id}
            if upstream.kind == "anthropic"
            else _to_anthropic(upstream.body, model.id)
        )
        try:
            result = MessagesResponse.model_validate(out)
            prompt, completion = int(result.usage["input_tokens"]), int(result.usage["output_tokens"])
        except (ValueError, KeyError) as exc:
            raise ProviderUnavailable(f"provider {upstream.provider!r} sent a malformed message") from exc
        charged = await meter.settle(
            charge=meter.price(prompt_tokens=prompt, completion_tokens=completion),
            provider=upstream.provider,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=upstream.latency_ms,
        )
    finally:
        await meter.release()
    response.headers["X-Request-Id"] = meter.request_id
    response.headers["X-Creditgate-Credits-Charged"] = str(charged)
    return result


async def _stream(rt: Any, meter: Meter, body: MessagesRequest, keys: dict[str, str]) -> StreamingResponse:
    """Anthropic stream events, translated from an OpenAI-style upstream stream."""
    from httpx_sse import EventSource

    payload = {**_as_openai(body), "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    upstream = await meter.open_stream(payload, user_keys=keys)

    async def relay() -> AsyncIterator[bytes]:
        delivered: list[str] = []
        usage: dict[str, int] | None = None
        stop = "end_turn"
        message: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": meter.model.id,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": meter.prompt_estimate, "output_tokens": 0},
        }
        try:
            yield _event("message_start", {"message": message})
            yield _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            async for event in EventSource(upstream.response).aiter_sse():
                if event.data.strip() == "[DONE]":
                    break
                try:
                    chunk = json.loads(event.data)
                except ValueError:
                    continue
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        delivered.append(text)
                        yield _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})
                    if choice.get("finish_reason"):
                        stop = STOP_REASONS.get(choice["finish_reason"], "end_turn")
            yield _event("content_block_stop", {"index": 0})
            output = int((usage or {}).get("completion_tokens", 0))
            yield _event(
                "message_delta",
                {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": output}},
            )
            yield _event("message_stop", {})
        finally:
            await upstream.response.aclose()
            await meter.settle_stream(
                usage=usage,
                delivered=delivered,
                provider=upstream.provider,
                latency_ms=int((time.perf_counter() - started) * 1000),
                outcome="ok" if usage else "cut",
            )

    return StreamingResponse(relay(), media_type="text/event-stream", headers={"X-Request-Id": meter.request_id})
