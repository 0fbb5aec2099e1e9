"""GET /catalog/models: token prices for chat models, per-image price and sizes for image models."""

from __future__ import annotations

import httpx

from creditgate.catalog.service import Catalog


async def test_image_models_show_their_per_image_price_and_sizes(async_client: httpx.AsyncClient) -> None:
    models = {m["id"]: m for m in (await async_client.get("/catalog/models")).json()["data"]}
    assert models["dall-e-3"]["pricing"] == {"per_image_usd": "0.04"}
    assert models["dall-e-3"]["image_sizes"] == ["1024x1024", "1024x1792", "1792x1024"]
    assert models["test-model"]["pricing"] == {"input_per_1k_usd": "0.001", "output_per_1k_usd": "0.002"}
    assert "image_sizes" not in models["test-model"]


def test_default_catalog_names_the_upstreams_users_run() -> None:
    catalog = Catalog.load()
    providers = {p.name: (p.kind, p.base_url, p.api_key_env) for p in catalog.providers}
    assert providers == {
        "openai": ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
        "anthropic": ("anthropic", "https://api.anthropic.com/v1", "ANTHROPIC_API_KEY"),
        "openrouter": ("openai", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        "fireworks": ("openai", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
        "together": ("openai", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
        "groq": ("openai", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    }
    chain = [r.provider for r in catalog.model("llama-3.3-70b").providers]
    assert chain == ["groq", "together", "fireworks", "openrouter"]
