"""POST /v1/chat/completions (OpenAI's shape, JSON or SSE), whichever protocol the serving provider speaks."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from creditgate.auth.deps import PrincipalDep, RuntimeDep
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.llm import relay
from creditgate.llm.lean import LeanRoute
from creditgate.llm.schemas import ChatCompletion, ChatCompletionRequest

router = APIRouter(route_class=LeanRoute, prefix="/v1", tags=["inference"])

SSE = {"text/event-stream": {"schema": {"type": "string", "description": "OpenAI chat.completion.chunk events"}}}


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": SSE}, **ERROR_RESPONSES(400, 401, 402, 404, 429, 502, protocol="openai")},
)
async def chat_completions(
    body: ChatCompletionRequest, principal: PrincipalDep, rt: RuntimeDep
) -> JSONResponse | StreamingResponse:
    """Create a chat completion; credits are held up front and settled to the actual usage (streams too)."""
    model, max_tokens = relay.chat_model(rt.catalog, body.model, max_tokens=body.output_limit())
    call = body.call(max_tokens=max_tokens)
    estimate = body.prompt_estimate(
        call.native, image_tokens=model.image_input_tokens, page_tokens=model.document_page_tokens
    )
    if body.stream:
        stream = await relay.stream(rt, principal, model, call, prompt_estimate=estimate)
        return StreamingResponse(stream.chunks, media_type="text/event-stream", headers=stream.headers)
    result = await relay.complete(rt, principal, model, call, prompt_estimate=estimate)
    return JSONResponse(result.body, headers=result.headers)
