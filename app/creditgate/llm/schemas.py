"""OpenAI-shaped request bodies for /v1/chat/completions (the response shapes live with the protocol)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from creditgate.llm.bounds import prompt_bound
from creditgate.providers.base import ChatCall, Turn
from creditgate.providers.openai import ChatCompletion, Choice, CompletionUsage, ResponseMessage

__all__ = ["ChatCompletion", "ChatCompletionRequest", "ChatMessage", "Choice", "CompletionUsage", "ResponseMessage"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return " ".join(str(part.get("text", "")) for part in self.content)
        return ""


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1, max_length=2048)
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2, strict=True)
    top_p: float | None = Field(default=None, ge=0, le=1, strict=True)
    n: int | None = Field(default=None, ge=1, le=1, strict=True, description="only n=1 is supported")
    stop: str | list[str] | None = None
    stream: bool = Field(default=False, strict=True)
    stream_options: dict[str, Any] | None = None
    user: str | None = None

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_estimate(self, native: Mapping[str, Any], *, image_tokens: int, page_tokens: int) -> int:
        """The most prompt tokens this request (``native``: its dump, as ``call`` forwards it) can cost upstream:
        every part the upstream receives (llm/bounds.py)."""
        texts = [m.text() for m in self.messages]
        return prompt_bound(native, texts, image_tokens=image_tokens, page_tokens=page_tokens)

    def call(self, *, max_tokens: int) -> ChatCall:
        """This request as adapters see it: as sent, and neutral (system and developer turns become the system)."""
        system = "\n\n".join(m.text() for m in self.messages if m.role in {"system", "developer"})
        turns = tuple(
            Turn("assistant" if m.role == "assistant" else "user", m.text())
            for m in self.messages
            if m.role not in {"system", "developer"}
        )
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return ChatCall(
            protocol="openai",
            native=self.model_dump(exclude_none=True),
            system=system,
            turns=turns,
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            include_usage=bool((self.stream_options or {}).get("include_usage")),
        )
