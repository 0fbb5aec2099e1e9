"""POST /v1/images/generations: per-image prices from the catalog, held and settled like chat."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from creditgate.auth.deps import PrincipalDep, RuntimeDep
from creditgate.errors import InvalidRequest
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.llm import relay
from creditgate.llm.lean import LeanRoute
from creditgate.providers.openai import ImageData

router = APIRouter(route_class=LeanRoute, prefix="/v1", tags=["inference"])


class ImageRequest(BaseModel):
    model: str = Field(default="dall-e-3", min_length=1, max_length=128)
    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(default=1, ge=1, le=4, strict=True)
    size: str = Field(default="1024x1024", max_length=16)
    response_format: Literal["url", "b64_json"] = "url"


class ImageResponse(BaseModel):
    created: int
    data: list[ImageData]


@router.post(
    "/images/generations",
    response_model=ImageResponse,
    responses=ERROR_RESPONSES(400, 401, 402, 404, 429, 502, protocol="openai"),
)
async def generate_images(body: ImageRequest, principal: PrincipalDep, rt: RuntimeDep) -> JSONResponse:
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
    if body.size in model.image_prices:  # held and charged at this size's price
        model = model.model_copy(update={"per_image": model.image_prices[body.size]})
    result = await relay.images(rt, principal, model, body.model_dump(), n=body.n)
    return JSONResponse({"created": int(time.time()), "data": result.body}, headers=result.headers)
