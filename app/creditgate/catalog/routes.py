"""GET /catalog/models and /catalog/providers (public)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from creditgate.auth.deps import RuntimeDep
from creditgate.catalog.service import ModelConfig
from creditgate.http_guard import GuardedRoute

router = APIRouter(route_class=GuardedRoute, prefix="/catalog", tags=["catalog"])


class ModelPricing(BaseModel):
    """USD prices as decimal strings: per 1,000 tokens for chat models, per image for image models."""

    input_per_1k_usd: str | None = None
    output_per_1k_usd: str | None = None
    per_image_usd: str | None = None


class ModelInfo(BaseModel):
    id: str
    object: str = "model"
    owned_by: str
    pricing: ModelPricing
    default_max_tokens: int
    max_output_tokens: int
    providers: list[str]
    image_sizes: list[str] | None = Field(default=None, description="the sizes an image model generates")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelInfo]


class ProviderInfo(BaseModel):
    name: str
    kind: str
    configured: bool
    circuit: str
    models: list[str]


class ProviderList(BaseModel):
    data: list[ProviderInfo]


def _pricing(model: ModelConfig) -> ModelPricing:
    if model.per_image is not None:
        return ModelPricing(per_image_usd=str(model.per_image))
    return ModelPricing(input_per_1k_usd=str(model.input_per_1k), output_per_1k_usd=str(model.output_per_1k))


@router.get("/models", response_model=ModelList, response_model_exclude_none=True)
async def models(rt: RuntimeDep) -> ModelList:
    """Every model with its USD prices (per 1,000 tokens, or per image and its sizes) and its providers in
    failover order."""
    return ModelList(
        data=[
            ModelInfo(
                id=m.id,
                owned_by=m.owned_by,
                pricing=_pricing(m),
                default_max_tokens=m.default_max_tokens,
                max_output_tokens=m.max_output_tokens,
                providers=[r.provider for r in m.providers],
                image_sizes=list(m.image_sizes) if m.per_image is not None else None,
            )
            for m in rt.catalog.models
        ]
    )


@router.get("/providers", response_model=ProviderList)
async def providers(rt: RuntimeDep) -> ProviderList:
    """Every provider, whether it has an API key, its circuit (closed/opened/half-opened) and its models."""
    return ProviderList(
        data=[
            ProviderInfo(
                name=p.name,
                kind=p.kind,
                configured=p.resolve_key() is not None,
                circuit=await rt.providers.state(p.name),
                models=[m.id for m in rt.catalog.models if any(r.provider == p.name for r in m.providers)],
            )
            for p in rt.catalog.providers
        ]
    )
