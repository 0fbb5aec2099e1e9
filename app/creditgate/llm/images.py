"""POST /v1/images/generations: per-image prices from the catalog, held and settled like chat."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from creditgate.auth.deps import PrincipalDep, RuntimeDep
from creditgate.errors import InvalidRequest
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.llm.metering import Meter
from creditgate.providers.router import openai_only

router = APIRouter(prefix="/v1", tags=["inference"])


class ImageRequest(BaseModel):
    model: str = Field(default="dall-e-3", min_length=1, max_length=128)
    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(default=1, ge=1, le=4)
    size: str = Field(default="1024x1024", max_length=16)
    response_format: Literal["url", "b64_json"] = "url"


class ImageData(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImageResponse(BaseModel):
    created: int
    data: list[ImageData]


def _is_images(kind: str, body: Any) -> bool:
    return isinstance(body.get("data"), list)


@router.post(
    "/images/generations", response_model=ImageResponse, responses=ERROR_RESPONSES(400, 401, 402, 404, 422, 429, 502)
)
async def generate_images(
    body: ImageRequest, principal: PrincipalDep, rt: RuntimeDep, response: Response
) -> ImageResponse:
    """Generate images; each returned image is charged the catalog's per-image price."""
    model = rt.catalog.model(body.model)
    if model.per_image is None:
        raise InvalidRequest(f"{model.id} is not an image model", param="model")
    if body.size not in model.image_sizes:
        raise InvalidRequest(
            f"size {body.size!r} is not offered by {model.id}; allowed: {', '.join(model.image_sizes)}",
            param="size",
            allowed=list(model.image_sizes),
        )
    meter = await Meter.open(rt, principal, model, prompt_estimate=0, images=body.n)
    keys = meter.user_keys
    started = time.perf_counter()
    try:
        upstream = await rt.providers.post_json(
            model=model,
            build=openai_only("/images/generations", body.model_dump()),
            timeout=rt.settings.upstream_timeout_seconds,
            valid=_is_images,
            user_keys=keys,
        )
        images = [ImageData.model_validate(d) for d in upstream.body["data"] if isinstance(d, dict)][: body.n]
        charged = await meter.settle(
            charge=meter.price(prompt_tokens=0, completion_tokens=0, images=len(images)),
            provider=upstream.provider,
            prompt_tokens=0,
            completion_tokens=len(images),
            latency_ms=int((time.perf_counter() - started) * 1000),
        )
    finally:
        await meter.release()
    response.headers["X-Request-Id"] = meter.request_id
    response.headers["X-Creditgate-Credits-Charged"] = str(charged)
    return ImageResponse(created=int(upstream.body.get("created") or time.time()), data=images)
