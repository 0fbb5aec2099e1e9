"""POST /v1/chat/completions (OpenAI-compatible, JSON or SSE)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from creditgate.auth.deps import PrincipalDep, RuntimeDep
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.llm import service
from creditgate.llm.schemas import ChatCompletionRequest, ChatCompletionResponse

router = APIRouter(prefix="/v1", tags=["inference"])

SSE = {"text/event-stream": {"schema": {"type": "string", "description": "OpenAI chat.completion.chunk events"}}}


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={200: {"content": SSE}, **ERROR_RESPONSES(400, 401, 402, 404, 422, 429, 502)},
)
async def chat_completions(
    body: ChatCompletionRequest, principal: PrincipalDep, rt: RuntimeDep, response: Response
) -> ChatCompletionResponse | StreamingResponse:
    """Create a chat completion; credits are held up front and settled to the actual usage (streams too)."""
    if body.stream:
        stream = await service.chat_stream(rt, principal, body)
        headers = {
            "X-Request-Id": stream.request_id,
            "X-Creditgate-Provider": stream.provider,
            "Cache-Control": "no-cache",
        }
        return StreamingResponse(stream.chunks, media_type="text/event-stream", headers=headers)
    result = await service.chat_completion(rt, principal, body)
    response.headers["X-Request-Id"] = result.request_id
    response.headers["X-Creditgate-Credits-Charged"] = str(result.charged)
    response.headers["X-Creditgate-Provider"] = result.provider
    return result.response
