"""POST /v1/messages and /v1/messages/count_tokens in Anthropic's shape, whichever protocol the provider speaks.

Anthropic's conventions hold on these routes: ``x-api-key`` (or Bearer) authenticates, errors come in
Anthropic's envelope (errors_http.py) and a stream's final ``message_delta`` carries the usage charged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from creditgate.auth.deps import PrincipalDep, RuntimeDep
from creditgate.catalog.service import ModelConfig
from creditgate.errors import InvalidRequest, ProviderUnavailable
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.llm import relay
from creditgate.llm.bounds import prompt_bound
from creditgate.llm.lean import LeanRoute
from creditgate.providers.anthropic import Message
from creditgate.providers.base import ChatCall, Turn

router = APIRouter(route_class=LeanRoute, prefix="/v1", tags=["inference"])
IMAGE_TOKENS = ModelConfig.model_fields["image_input_tokens"].default
PAGE_TOKENS = ModelConfig.model_fields["document_page_tokens"].default
SSE = {"text/event-stream": {"schema": {"type": "string", "description": "Anthropic message stream events"}}}


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(str(b.get("text", "")) for b in self.content if b.get("type") == "text")


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=128)
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=2048)
    system: str | list[dict[str, Any]] | None = None

    def system_text(self) -> str:
        if isinstance(self.system, list):
            return "".join(str(b.get("text", "")) for b in self.system)
        return self.system or ""

    def prompt_estimate(
        self,
        native: Mapping[str, Any] | None = None,
        *,
        image_tokens: int = IMAGE_TOKENS,
        page_tokens: int = PAGE_TOKENS,
    ) -> int:
        """The most prompt tokens this request (``native``: its dump, as ``call`` forwards it) can cost upstream:
        every part the upstream receives (llm/bounds.py)."""
        texts = [self.system_text()] + [m.text() for m in self.messages]
        native = self.model_dump(exclude_none=True) if native is None else native
        return prompt_bound(native, texts, image_tokens=image_tokens, page_tokens=page_tokens)

    def call(self, *, max_tokens: int) -> ChatCall:
        return ChatCall(
            protocol="anthropic",
            native=self.model_dump(exclude_none=True, exclude={"stream"}),
            system=self.system_text(),
            turns=tuple(Turn(m.role, m.text()) for m in self.messages),
            max_tokens=max_tokens,
        )


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=1, strict=True)
    stop_sequences: list[str] | None = None
    stream: bool = Field(default=False, strict=True)

    def call(self, *, max_tokens: int) -> ChatCall:
        return replace(
            super().call(max_tokens=max_tokens), temperature=self.temperature, stop=tuple(self.stop_sequences or ())
        )


class TokenCount(BaseModel):
    input_tokens: int


@router.post(
    "/messages",
    response_model=Message,
    responses={200: {"content": SSE}, **ERROR_RESPONSES(400, 401, 402, 404, 429, 502, protocol="anthropic")},
)
async def messages(body: MessagesRequest, principal: PrincipalDep, rt: RuntimeDep) -> JSONResponse | StreamingResponse:
    """Anthropic-style messages; credits held and settled exactly like chat completions."""
    model, max_tokens = relay.chat_model(rt.catalog, body.model, max_tokens=body.max_tokens)
    call = body.call(max_tokens=max_tokens)
    estimate = body.prompt_estimate(
        call.native, image_tokens=model.image_input_tokens, page_tokens=model.document_page_tokens
    )
    if body.stream:
        stream = await relay.stream(rt, principal, model, call, prompt_estimate=estimate)
        return StreamingResponse(stream.chunks, media_type="text/event-stream", headers=stream.headers)
    result = await relay.complete(rt, principal, model, call, prompt_estimate=estimate)
    return JSONResponse(result.body, headers=result.headers)


@router.post(
    "/messages/count_tokens",
    response_model=TokenCount,
    responses=ERROR_RESPONSES(400, 401, 404, protocol="anthropic"),
)
async def count_tokens(body: CountTokensRequest, principal: PrincipalDep, rt: RuntimeDep) -> JSONResponse:
    """The prompt's input tokens: counted by an Anthropic-style provider of the model, else the gateway's
    (deliberately high) estimate — ``X-Creditgate-Token-Count`` says which. Free, and not a quota call: the
    vendor is asked with the operator's key at most a small burst of times per caller (then the estimate),
    and a count that fails never counts against the provider's circuit (providers/pool.py)."""
    model = rt.catalog.model(body.model)
    if model.per_image is not None:
        raise InvalidRequest(f"{model.id} is an image model", param="model")
    call = body.call(max_tokens=model.default_max_tokens)
    try:
        served = await rt.providers.count_tokens(
            model=model, call=call, timeout=rt.settings.upstream_timeout_seconds, caller=principal.quota_subject
        )
    except ProviderUnavailable:
        return JSONResponse({"input_tokens": body.prompt_estimate()}, headers={"X-Creditgate-Token-Count": "estimate"})
    return JSONResponse({"input_tokens": served.value}, headers={"X-Creditgate-Token-Count": served.provider})
