"""Anthropic's wire protocol: ``/messages`` (JSON and its typed SSE events), ``/messages/count_tokens``.

Spoken by Anthropic's API; also the shape of the gateway's own ``/v1/messages``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from httpx_sse import ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from creditgate.providers.base import (
    MAX_TOKENS,
    Adapter,
    ChatCall,
    Completion,
    Delta,
    Finish,
    Kind,
    Malformed,
    StreamParser,
    StreamWriter,
    Usage,
    token_count,
)

VERSION = "2023-06-01"
FINISHES: dict[str, Finish] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
STOP_REASONS: dict[Finish, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
COUNTED = ("messages", "system", "tools", "tool_choice", "thinking")  # what count_tokens accepts


class MessageUsage(BaseModel):
    model_config = ConfigDict(extra="allow")

    input_tokens: int = Field(ge=0, le=MAX_TOKENS)
    output_tokens: int = Field(ge=0, le=MAX_TOKENS)
    # Prompt caching: Anthropic reports cached prompt tokens apart from input_tokens (writes cost 1.25×, reads
    # 0.1× the input price). The gateway bills them all as input tokens, so a cached prompt never rides free.
    cache_creation_input_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    cache_read_input_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)

    def prompt_tokens(self) -> int:
        return self.input_tokens + (self.cache_creation_input_tokens or 0) + (self.cache_read_input_tokens or 0)


class Message(BaseModel):
    """The response shape, as the gateway reads it from upstreams and documents it to clients."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: MessageUsage


def event(data: Mapping[str, Any]) -> bytes:
    """One Anthropic SSE event: its ``type`` is also the event name."""
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def _prompt_tokens(usage: Mapping[str, Any]) -> int:
    """Input tokens plus the cached ones (see ``MessageUsage``); ``Malformed`` for a count that is none."""
    fields = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return min(sum(token_count(usage.get(f), field=f) for f in fields), MAX_TOKENS)


def _text(blocks: list[dict[str, Any]]) -> str:
    return "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")


class AnthropicStreamParser:
    """Usage arrives in two parts: input tokens in ``message_start``, output (and maybe input) in ``message_delta``."""

    def __init__(self) -> None:
        self.input_tokens = 0

    def feed(self, sse: ServerSentEvent) -> list[Delta]:
        try:
            data = json.loads(sse.data)
        except ValueError:
            return []
        if not isinstance(data, dict):
            return []
        kind = data.get("type")
        if kind == "message_start":
            usage = (data.get("message") or {}).get("usage") or {}
            self.input_tokens = _prompt_tokens(usage)
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [Delta(text=str(delta.get("text") or ""), native=data)]
        elif kind == "message_delta":
            usage = data.get("usage") or {}
            if usage.get("input_tokens") is not None:
                self.input_tokens = _prompt_tokens(usage)
            stop = (data.get("delta") or {}).get("stop_reason")
            return [
                Delta(
                    usage=Usage(self.input_tokens, token_count(usage.get("output_tokens"), field="output_tokens")),
                    finish=FINISHES.get(str(stop), "stop") if stop else None,
                    native=data,
                )
            ]
        elif kind == "message_stop":
            return [Delta(done=True, native=data)]
        return [Delta(native=data)]


class AnthropicStreamWriter:
    """Events for an Anthropic client: the upstream's own when it speaks Anthropic, else built from the deltas.

    A translated stream's ``message_start`` can only carry the gateway's prompt estimate; its final
    ``message_delta`` carries the numbers charged, which is what Anthropic's SDKs (0.51+) report as usage.
    """

    def __init__(self, *, model: str, passthrough: bool, prompt_estimate: int) -> None:
        self.model, self.passthrough, self.prompt_estimate = model, passthrough, prompt_estimate
        self.stop: Finish = "stop"

    def start(self) -> bytes:
        if self.passthrough:
            return b""
        message: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_estimate, "output_tokens": 0},
        }
        return event({"type": "message_start", "message": message}) + event(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        )

    def write(self, delta: Delta) -> bytes:
        if self.passthrough:
            data = dict(delta.native or {})
            if data.get("type") == "message_start" and isinstance(data.get("message"), dict):
                data["message"] = {**data["message"], "model": self.model}
            return event(data) if "type" in data else b""
        if delta.finish:
            self.stop = delta.finish
        if not delta.text:
            return b""
        return event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta.text}})

    def finish(self, billed: Usage, *, complete: bool) -> bytes:
        if not complete:  # what Anthropic sends when a stream fails part-way
            return event({"type": "error", "error": {"type": "api_error", "message": "the upstream stream broke off"}})
        if self.passthrough:
            return b""
        usage = {"input_tokens": billed.prompt_tokens, "output_tokens": billed.completion_tokens}
        return (
            event({"type": "content_block_stop", "index": 0})
            + event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": STOP_REASONS[self.stop], "stop_sequence": None},
                    "usage": usage,
                }
            )
            + event({"type": "message_stop"})
        )


class AnthropicAdapter(Adapter):
    kind: ClassVar[Kind] = "anthropic"

    def headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key, "anthropic-version": VERSION}

    def _translated(self, call: ChatCall) -> dict[str, Any]:
        payload: dict[str, Any] = {"messages": [{"role": t.role, "content": t.text} for t in call.turns]}
        if call.system:
            payload["system"] = call.system
        if call.temperature is not None:
            payload["temperature"] = min(call.temperature, 1.0)  # OpenAI's range is 0–2, Anthropic's 0–1
        if call.top_p is not None:
            payload["top_p"] = call.top_p
        if call.stop:
            payload["stop_sequences"] = list(call.stop)
        return payload

    def chat_request(self, call: ChatCall, *, model: str, stream: bool) -> tuple[str, dict[str, Any]]:
        payload = dict(call.native) if call.protocol == self.kind else self._translated(call)
        return "/messages", payload | {"model": model, "max_tokens": call.max_tokens, "stream": stream}

    def parse_completion(self, body: Any) -> Completion:
        try:
            message = Message.model_validate(body)
        except ValidationError as exc:
            raise Malformed("not a message") from exc
        usage = Usage(message.usage.prompt_tokens(), message.usage.output_tokens)
        finish = FINISHES.get(message.stop_reason or "end_turn", "stop")
        return Completion(self.kind, _text(message.content), usage, finish, dict(body))

    def stream_parser(self) -> StreamParser:
        return AnthropicStreamParser()

    def render_completion(self, completion: Completion, *, model: str, call: ChatCall) -> dict[str, Any]:
        if completion.kind == self.kind:
            return {**completion.native, "model": model}
        usage = completion.usage or Usage(0, 0)
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": completion.text}],
            "stop_reason": STOP_REASONS[completion.finish],
            "stop_sequence": None,
            "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
        }

    def stream_writer(self, *, model: str, call: ChatCall, upstream: Kind, prompt_estimate: int) -> StreamWriter:
        return AnthropicStreamWriter(model=model, passthrough=upstream == self.kind, prompt_estimate=prompt_estimate)

    def rate_limit_headers(self, *, limit: int, remaining: int, reset: datetime) -> dict[str, str]:
        return {
            "anthropic-ratelimit-requests-limit": str(limit),
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": reset.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def count_request(self, call: ChatCall, *, model: str) -> tuple[str, dict[str, Any]] | None:
        if call.protocol == self.kind:
            payload = {k: v for k, v in call.native.items() if k in COUNTED}
        else:
            payload = self._translated(call)
            payload = {k: v for k, v in payload.items() if k in COUNTED}
        return "/messages/count_tokens", payload | {"model": model}

    def parse_count(self, body: Any) -> int:
        tokens = body.get("input_tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, int) or tokens < 0:
            raise Malformed("no input_tokens")
        return tokens
