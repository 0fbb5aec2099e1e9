"""The pricing catalog: which providers serve a model, in what order, at what price."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from creditgate.errors import ModelNotFound

DEFAULT_CATALOG = Path(__file__).with_name("default_catalog.json")


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["openai", "anthropic"] = "openai"  # the wire protocol (providers/<kind>.py)
    base_url: str
    api_key_env: str | None = None
    api_key: str | None = Field(default=None, repr=False)

    def resolve_key(self) -> str | None:
        if self.api_key:
            return self.api_key
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ModelRoute(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    model: str | None = None  # the upstream model name, when it differs


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    owned_by: str = "creditgate"
    input_per_1k: Decimal = Field(default=Decimal(0), ge=0, description="USD per 1,000 prompt tokens")
    output_per_1k: Decimal = Field(default=Decimal(0), ge=0, description="USD per 1,000 completion tokens")
    default_max_tokens: int = Field(default=4096, ge=1)
    max_output_tokens: int = Field(default=16384, ge=1)
    per_image: Decimal | None = Field(default=None, ge=0, description="USD per generated image (image models)")
    image_input_tokens: int = Field(
        default=1600, ge=0, description="the most prompt tokens one input image can cost (the hold counts this)"
    )
    document_page_tokens: int = Field(
        default=4600,
        ge=0,
        description="the most prompt tokens one page of a PDF can cost: its text (up to ~3,000) and its image",
    )
    image_sizes: tuple[str, ...] = ("1024x1024",)
    # USD per image by size, where a size costs other than ``per_image`` (vendors price larger images higher).
    image_prices: dict[str, Decimal] = Field(default_factory=dict)
    providers: tuple[ModelRoute, ...] = Field(min_length=1)

    def cost_usd(self, *, prompt_tokens: int, completion_tokens: int, images: int = 0) -> Decimal:
        tokens = (self.input_per_1k * prompt_tokens + self.output_per_1k * completion_tokens) / 1000
        return tokens + (self.per_image or Decimal(0)) * images


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    providers: tuple[ProviderConfig, ...]
    models: tuple[ModelConfig, ...]
    # By id, for one dict lookup per request; built on first use, and again for a copy with other models.
    _models: tuple[tuple[ModelConfig, ...], dict[str, ModelConfig]] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _routes_name_known_providers(self) -> Catalog:
        names = {p.name for p in self.providers}
        for model in self.models:
            for route in model.providers:
                if route.provider not in names:
                    raise ValueError(f"model {model.id!r} routes to unknown provider {route.provider!r}")
        if len({m.id for m in self.models}) != len(self.models):
            raise ValueError("model ids must be unique")
        return self

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        return cls.model_validate_json((path or DEFAULT_CATALOG).read_text())

    def model(self, model_id: str) -> ModelConfig:
        if self._models is None or self._models[0] is not self.models:
            self._models = (self.models, {m.id: m for m in self.models})
        if (model := self._models[1].get(model_id)) is None:
            raise ModelNotFound(
                f"model {model_id!r} is not in the catalog; GET /catalog/models lists the available models",
                model=model_id,
            )
        return model

    def provider(self, name: str) -> ProviderConfig:
        return next(p for p in self.providers if p.name == name)

    def routed_to_single_upstream(self, *, name: str, base_url: str, api_key: str) -> Catalog:
        """The same models and prices, every one served by one provider (``--demo`` and tests)."""
        provider = ProviderConfig(name=name, base_url=base_url, api_key=api_key)
        models = tuple(
            m.model_copy(update={"providers": (ModelRoute(provider=name, model=m.id),)}) for m in self.models
        )
        return Catalog(providers=(provider,), models=models)
