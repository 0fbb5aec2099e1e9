"""OpenAI's wire protocol: ``/chat/completions`` (JSON and SSE chunks), ``/images/generations``.

Spoken by OpenAI, OpenRouter, Fireworks, Together, Groq and most others; also the shape of the gateway's
own ``/v1/chat/completions``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
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

FINISHES: dict[str, Finish] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


# The response shape, as the gateway reads it from upstreams and documents it to clients.
class ResponseMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | None = None


class Choice(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int
    message: ResponseMessage
    finish_reason: str | None = None


class CompletionUsage(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = Field(ge=0, le=MAX_TOKENS)
    completion_tokens: int = Field(ge=0, le=MAX_TOKENS)
    total_tokens: int = Field(ge=0)


class ChatCompletion(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice] = Field(min_length=1)
    usage: CompletionUsage | None = None


class ImageData(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


def _sse(data: Mapping[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


class OpenAIStreamParser:
    def feed(self, event: ServerSentEvent) -> list[Delta]:
        if event.data.strip() == "[DONE]":
            return [Delta(done=True)]
        try:
            chunk = json.loads(event.data)
        except ValueError:
            return []  # a malformed line is dropped, not forwarded
        if not isinstance(chunk, dict):
            return []
        usage = chunk.get("usage")
        text, finish = "", None
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str):
                text += content
            if choice.get("finish_reason"):
                finish = FINISHES.get(str(choice["finish_reason"]), "stop")
        return [Delta(text=text, usage=_usage(usage) if isinstance(usage, dict) else None, finish=finish, native=chunk)]


def _usage(usage: Mapping[str, Any]) -> Usage:
    return Usage(
        token_count(usage.get("prompt_tokens"), field="prompt_tokens"),
        token_count(usage.get("completion_tokens"), field="completion_tokens"),
    )


class OpenAIStreamWriter:
    """Chunks for an OpenAI client: the upstream's own when it speaks OpenAI, else built from the deltas."""

    def __init__(self, *, model: str, include_usage: bool, passthrough: bool) -> None:
        self.model, self.include_usage, self.passthrough = model, include_usage, passthrough
        self.base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({**self.base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    def start(self) -> bytes:
        return b"" if self.passthrough else self._chunk({"role": "assistant", "content": ""})

    def write(self, delta: Delta) -> bytes:
        if not self.passthrough:
            out = self._chunk({"content": delta.text}) if delta.text else b""
            return out + (self._chunk({}, delta.finish) if delta.finish else b"")
        if delta.done:
            return _sse("[DONE]")
        chunk = dict(delta.native or {})
        if "usage" in chunk and not self.include_usage:
            if not chunk.get("choices"):
                return b""
            chunk.pop("usage")
        chunk["model"] = self.model
        return _sse(chunk)

    def finish(self, billed: Usage, *, complete: bool) -> bytes:
        if self.passthrough or not complete:
            return b""  # the upstream's own [DONE] went through; a cut stream ends without one
        usage = b""
        if self.include_usage:
            numbers = {
                "prompt_tokens": billed.prompt_tokens,
                "completion_tokens": billed.completion_tokens,
                "total_tokens": billed.prompt_tokens + billed.completion_tokens,
            }
            usage = _sse({**self.base, "choices": [], "usage": numbers})
        return usage + _sse("[DONE]")


class OpenAIAdapter(Adapter):
    kind: ClassVar[Kind] = "openai"

    def headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def chat_request(self, call: ChatCall, *, model: str, stream: bool) -> tuple[str, dict[str, Any]]:
        if call.protocol == self.kind:
            payload = {k: v for k, v in call.native.items() if k not in {"max_completion_tokens", "stream_options"}}
        else:
            messages = [{"role": "system", "content": call.system}] if call.system else []
            messages += [{"role": t.role, "content": t.text} for t in call.turns]
            payload = {"messages": messages}
            if call.temperature is not None:
                payload["temperature"] = call.temperature
            if call.top_p is not None:
                payload["top_p"] = call.top_p
            if call.stop:
                payload["stop"] = list(call.stop)
        payload |= {"model": model, "max_tokens": call.max_tokens, "stream": stream}
        if stream:  # always ask for the final usage chunk: it is what the stream is charged
            payload["stream_options"] = {"include_usage": True}
        return "/chat/completions", payload

    def parse_completion(self, body: Any) -> Completion:
        try:
            parsed = ChatCompletion.model_validate(body)
        except ValidationError as exc:
            raise Malformed("not a chat completion") from exc
        choice = parsed.choices[0]
        usage = _usage(parsed.usage.model_dump()) if parsed.usage is not None else None
        finish = FINISHES.get(choice.finish_reason or "stop", "stop")
        return Completion(self.kind, choice.message.content or "", usage, finish, dict(body))

    def stream_parser(self) -> StreamParser:
        return OpenAIStreamParser()

    def render_completion(self, completion: Completion, *, model: str, call: ChatCall) -> dict[str, Any]:
        if completion.kind == self.kind:
            return {**completion.native, "model": model}
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "finish_reason": completion.finish,
                    "logprobs": None,
                }
            ],
        }
        if completion.usage is not None:
            p, c = completion.usage.prompt_tokens, completion.usage.completion_tokens
            body["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        return body

    def stream_writer(self, *, model: str, call: ChatCall, upstream: Kind, prompt_estimate: int) -> StreamWriter:
        return OpenAIStreamWriter(model=model, include_usage=call.include_usage, passthrough=upstream == self.kind)

    def images_request(self, payload: Mapping[str, Any], *, model: str) -> tuple[str, dict[str, Any]] | None:
        return "/images/generations", {**payload, "model": model}

    def parse_images(self, body: Any) -> list[dict[str, Any]]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise Malformed("no image data")
        try:
            return [ImageData.model_validate(d).model_dump(exclude_none=True) for d in data]
        except ValidationError as exc:
            raise Malformed("not image data") from exc
