"""GET /v1/models and /v1/models/{id}: the catalog models the caller may use, in OpenAI's shape — or in
Anthropic's when the request carries ``anthropic-version`` (as Anthropic's SDKs send it)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query
from pydantic import BaseModel

from creditgate.auth.deps import PrincipalDep, RuntimeDep, SessionDep
from creditgate.byok.service import listed
from creditgate.catalog.service import ModelConfig
from creditgate.errors import ModelNotFound
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.http_guard import GuardedRoute
from creditgate.runtime import Runtime

router = APIRouter(route_class=GuardedRoute, prefix="/v1", tags=["inference"])
EPOCH = "1970-01-01T00:00:00Z"  # the catalog has no release dates


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class AnthropicModel(BaseModel):
    type: Literal["model"] = "model"
    id: str
    display_name: str
    created_at: str = EPOCH


class AnthropicModelList(BaseModel):
    data: list[AnthropicModel]
    has_more: bool
    first_id: str | None
    last_id: str | None


AnthropicVersion = Annotated[str | None, Header(description="Anthropic's API version: answer in Anthropic's shape")]


async def _usable(rt: Runtime, session: SessionDep, user_id: int) -> list[ModelConfig]:
    """Models with at least one provider the gateway (or the caller's own key) can call."""
    own = {k.provider for k in await listed(session, user_id=user_id)}
    keyed = {p.name for p in rt.catalog.providers if p.name in own or p.resolve_key()}
    return [m for m in rt.catalog.models if any(r.provider in keyed for r in m.providers)]


def _openai(model: ModelConfig) -> OpenAIModel:
    return OpenAIModel(id=model.id, owned_by=model.owned_by)


def _anthropic(model: ModelConfig) -> AnthropicModel:
    return AnthropicModel(id=model.id, display_name=model.id)


@router.get(
    "/models",
    response_model=OpenAIModelList | AnthropicModelList,
    responses=ERROR_RESPONSES(400, 401, protocol="openai"),
)
async def list_models(
    principal: PrincipalDep,
    rt: RuntimeDep,
    session: SessionDep,
    anthropic_version: AnthropicVersion = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Anthropic's page size")] = 20,
    after_id: Annotated[str | None, Query(max_length=128)] = None,
    before_id: Annotated[str | None, Query(max_length=128)] = None,
) -> OpenAIModelList | AnthropicModelList:
    """Every model the caller may use (``limit``, ``after_id``, ``before_id`` page Anthropic's shape)."""
    models = await _usable(rt, session, principal.user_id)
    if anthropic_version is None:
        return OpenAIModelList(data=[_openai(m) for m in models])
    ids = [m.id for m in models]
    start = ids.index(after_id) + 1 if after_id in ids else 0
    end = ids.index(before_id) if before_id in ids else len(ids)
    window = models[start:end]
    page = window[-limit:] if before_id is not None else window[:limit]
    return AnthropicModelList(
        data=[_anthropic(m) for m in page],
        has_more=len(page) < len(window),
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
    )


@router.get(
    "/models/{model_id:path}",
    response_model=OpenAIModel | AnthropicModel,
    responses=ERROR_RESPONSES(401, 404, protocol="openai"),
)
async def retrieve_model(
    model_id: str,
    principal: PrincipalDep,
    rt: RuntimeDep,
    session: SessionDep,
    anthropic_version: AnthropicVersion = None,
) -> OpenAIModel | AnthropicModel:
    """One model the caller may use; 404 ``model_not_found`` otherwise."""
    for model in await _usable(rt, session, principal.user_id):
        if model.id == model_id:
            return _openai(model) if anthropic_version is None else _anthropic(model)
    raise ModelNotFound(f"model {model_id!r} is not available; GET /v1/models lists those you may use", model=model_id)
