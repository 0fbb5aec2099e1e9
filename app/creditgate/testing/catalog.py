"""The catalog tests run against: the default models plus flat-priced test models, on one upstream."""

from __future__ import annotations

from decimal import Decimal

from creditgate.catalog.service import Catalog, ModelConfig, ModelRoute

FAKE_UPSTREAM = "http://fake-provider.test/v1"


def catalog_for_tests(base_url: str = FAKE_UPSTREAM) -> Catalog:
    """Every default model plus ``test-model`` and ``free-model``, all served by the fake at ``base_url``."""
    routed = Catalog.load().routed_to_single_upstream(name="fake", base_url=base_url, api_key="sk-fake")
    extra = (
        ModelConfig(
            id="test-model",
            owned_by="creditgate-tests",
            input_per_1k=Decimal("0.001"),
            output_per_1k=Decimal("0.002"),
            default_max_tokens=1000,
            max_output_tokens=100_000,
            providers=(ModelRoute(provider="fake"),),
        ),
        ModelConfig(
            id="free-model",
            owned_by="creditgate-tests",
            input_per_1k=Decimal(0),
            output_per_1k=Decimal(0),
            providers=(ModelRoute(provider="fake"),),
        ),
    )
    return Catalog(providers=routed.providers, models=routed.models + extra)
