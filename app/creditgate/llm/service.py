"""Chat requests, straight down: price → hold → providers → settle (or release) → usage record.

The provider call never runs inside a database transaction; ``Meter`` (app/llm/metering.py) makes
sure every hold is settled or released exactly once.

Charging rules
- Non-streaming: the upstream ``usage`` prices the request; without it, the gateway's estimate of
  the prompt plus the returned text. Never above the hold (``max_tokens`` at the output price).
- Streaming: the gateway asks upstream for the final usage chunk and charges it. If the stream
  ends without one — upstream cut mid-way, no usage sent, or the client disconnected — it charges
  the prompt estimate plus the text actually delivered so far; if no text was delivered at all,
  nothing. Never above the hold.
- Every provider failing, or a 4xx the provider blamed on the request: nothing charged.
- BYOK (the user's own key for the provider): 0 credits, usage still recorded.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

from httpx_sse import EventSource
from pydantic import ValidationError

from creditgate.auth.service import Principal
from creditgate.catalog import pricing
from creditgate.catalog.service import ModelConfig
from creditgate.errors import InvalidRequest, ProviderUnavailable
from creditgate.llm.metering import Meter
from creditgate.llm.schemas import ChatCompletionRequest, ChatCompletionResponse
from creditgate.providers.router import is_chat_completion, openai_only
from creditgate.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChatResult:
    response: ChatCompletionResponse
    request_id: str
    charged: Decimal
    provider: str


@dataclass(frozen=True, slots=True)
class StreamResult:
    chunks: AsyncIterator[bytes]
    request_id: str
    provider: str


def _limits(rt: Runtime, request: ChatCompletionRequest) -> tuple[ModelConfig, int, int]:
    model = rt.catalog.model(request.model)
    if model.per_image is not None:
        raise InvalidRequest(f"{model.id} is an image model: use /v1/images/generations", param="model")
    max_tokens = request.output_limit() or model.default_max_tokens
    if max_tokens > model.max_output_tokens:
        raise InvalidRequest(
            f"max_tokens {max_tokens} exceeds {model.id}'s limit of {model.max_output_tokens}", param="max_tokens"
        )
    return model, max_tokens, pricing.estimate_prompt_tokens([m.text() for m in request.messages])


def _payload(request: ChatCompletionRequest, max_tokens: int) -> dict[str, object]:
    payload = request.model_dump(exclude_none=True)
    payload["max_tokens"] = max_tokens
    payload.pop("max_completion_tokens", None)
    return payload


async def chat_completion(rt: Runtime, principal: Principal, request: ChatCompletionRequest) -> ChatResult:
    model, max_tokens, prompt_estimate = _limits(rt, request)
    meter = await Meter.open(rt, principal, model, prompt_estimate=prompt_estimate, max_tokens=max_tokens)
    try:
        upstream = await rt.providers.post_json(
            model=model,
            build=openai_only("/chat/completions", _payload(request, max_tokens)),
            timeout=rt.settings.upstream_timeout_seconds,
            valid=is_chat_completion,
            user_keys=meter.user_keys,
        )
        try:
            response = ChatCompletionResponse.model_validate({**upstream.body, "model": model.id})
        except ValidationError as exc:
            raise ProviderUnavailable(
                f"provider {upstream.provider!r} sent a response that is not a chat completion",
                model=model.id,
                attempts=[{"provider": upstream.provider, "outcome": "malformed response"}],
            ) from exc
        if response.usage is not None:
            prompt, completion = response.usage.prompt_tokens, response.usage.completion_tokens
        else:
            prompt = prompt_estimate
            completion = pricing.estimate_prompt_tokens([c.message.content or "" for c in response.choices])
        charged = await meter.settle(
            charge=meter.price(prompt_tokens=prompt, completion_tokens=completion),
            provider=upstream.provider,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=upstream.latency_ms,
        )
        return ChatResult(response, meter.request_id, charged, upstream.provider)
    finally:
        await meter.release()  # no-op once settled


async def chat_stream(rt: Runtime, principal: Principal, request: ChatCompletionRequest) -> StreamResult:
    """Open the upstream stream (failover happens before the first byte) and meter what flows through."""
    model, max_tokens, prompt_estimate = _limits(rt, request)
    meter = await Meter.open(rt, principal, model, prompt_estimate=prompt_estimate, max_tokens=max_tokens)
    client_wants_usage = bool((request.stream_options or {}).get("include_usage"))
    payload = _payload(request, max_tokens)
    payload["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    upstream = await meter.open_stream(payload, user_keys=meter.user_keys)

    async def relay() -> AsyncIterator[bytes]:
        delivered: list[str] = []
        usage: dict[str, int] | None = None
        outcome = "cut"
        try:
            async for event in EventSource(upstream.response).aiter_sse():
                if event.data.strip() == "[DONE]":
                    outcome = "ok"
                    yield b"data: [DONE]\n\n"
                    break
                try:
                    chunk = json.loads(event.data)
                except ValueError:
                    continue  # a malformed line is dropped, not forwarded
                if not isinstance(chunk, dict):
                    continue
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                    if not client_wants_usage:
                        if not chunk.get("choices"):
                            continue
                        chunk.pop("usage")
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if isinstance(text, str) and text:
                        delivered.append(text)
                chunk["model"] = model.id
                yield f"data: {json.dumps(chunk)}\n\n".encode()
        except Exception:
            log.warning("stream from %s broke off", upstream.provider, exc_info=True)
        except BaseException:  # the client went away (cancellation): charge what was delivered
            outcome = "client_disconnected"
            raise
        finally:
            await upstream.response.aclose()
            await meter.settle_stream(
                usage=usage,
                delivered=delivered,
                provider=upstream.provider,
                latency_ms=int((time.perf_counter() - started) * 1000),
                outcome="ok_no_done" if usage is not None and outcome == "cut" else outcome,
            )

    return StreamResult(relay(), meter.request_id, upstream.provider)
