"""app/catalog/pricing.py: estimates, the increment setting and the affordability hint."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.catalog import pricing
from creditgate.catalog.service import Catalog, ModelConfig, ModelRoute
from creditgate.db.models import AppSetting

PRICE = {"margin": Decimal("1.5"), "credit_value_usd": Decimal("0.01"), "increment": Decimal("0.1")}


def model(input_per_1k: str, output_per_1k: str) -> ModelConfig:
    return ModelConfig(
        id="m",
        input_per_1k=Decimal(input_per_1k),
        output_per_1k=Decimal(output_per_1k),
        max_output_tokens=5000,
        providers=(ModelRoute(provider="p"),),
    )


def test_affordable_tokens_are_really_affordable() -> None:
    m = model("0.001", "0.002")
    tokens = pricing.max_affordable_tokens(m, balance=Decimal("1.00"), prompt_tokens=100, **PRICE)
    assert pricing.credits_for(m, prompt_tokens=100, completion_tokens=tokens, **PRICE) <= Decimal("1.00")
    assert pricing.credits_for(m, prompt_tokens=100, completion_tokens=tokens + 400, **PRICE) > Decimal("1.00")


@pytest.mark.parametrize(
    ("output_price", "balance", "expected"), [("0", "1.00", 5000), ("0.002", "0.00", 0), ("0.002", "0.05", 0)]
)
def test_affordable_edges(output_price: str, balance: str, expected: int) -> None:
    m = model("0.001", output_price)
    assert pricing.max_affordable_tokens(m, balance=Decimal(balance), prompt_tokens=10, **PRICE) == expected


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ([], 3),  # the reply's priming only
        (["abc"], 9),  # 3 bytes → 1 + 1, framing 4, priming 3
        (["é" * 3, "hello world"], 18),  # bytes, not characters: 6 → 3 and 11 → 4; framing 8; priming 3
    ],
)
def test_prompt_estimate_is_the_documented_formula(texts: list[str], expected: int) -> None:
    assert pricing.estimate_prompt_tokens(texts) == expected


def test_exact_affordable_tokens() -> None:
    # 1.00 credit at margin 1.5 buys $0.006667; the 3,000-token prompt costs $0.003, leaving 1,833 output tokens.
    m = model("0.001", "0.002")
    assert pricing.max_affordable_tokens(m, balance=Decimal("1.00"), prompt_tokens=3000, **PRICE) == 1833


def test_only_whole_increments_of_the_balance_count() -> None:
    # 0.08 credit is less than one 0.1 increment: nothing is affordable (not rounded up to 0.1).
    m = model("0.001", "0.002")
    assert pricing.max_affordable_tokens(m, balance=Decimal("0.08"), prompt_tokens=10, **PRICE) == 0


def test_free_output_after_an_exactly_paid_prompt_is_all_affordable() -> None:
    # 0.10 credit pays the 1,000-token prompt exactly; output is free, so the model's whole output is affordable.
    m = model("0.001", "0")
    price = {**PRICE, "margin": Decimal(1)}
    assert pricing.max_affordable_tokens(m, balance=Decimal("0.10"), prompt_tokens=1000, **price) == 5000
    assert pricing.max_affordable_tokens(m, balance=Decimal("0.00"), prompt_tokens=1000, **price) == 0


def test_images_are_charged_only_when_there_are_images() -> None:
    m = model("0", "0").model_copy(update={"per_image": Decimal("0.04")})
    assert pricing.credits_for(m, prompt_tokens=0, completion_tokens=0, **PRICE) == Decimal("0.00")
    assert pricing.credits_for(m, prompt_tokens=0, completion_tokens=0, images=2, **PRICE) == Decimal("12.00")


def test_prompt_estimate_is_never_below_a_bytes_over_four_count() -> None:
    texts = ["hello world", "ü" * 100, ""]
    assert pricing.estimate_prompt_tokens(texts) >= sum(len(t.encode()) // 4 for t in texts)


async def test_increment_comes_from_the_settings_table(cg_sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with cg_sessionmaker() as s:
        assert await pricing.current_increment(s, default=Decimal("0.1")) == Decimal("0.1")
    async with cg_sessionmaker() as s, s.begin():
        s.add(AppSetting(key=pricing.INCREMENT_KEY, value="1.0"))
    async with cg_sessionmaker() as s:
        assert await pricing.current_increment(s, default=Decimal("0.1")) == Decimal("1.0")


def test_catalog_rejects_unknown_providers_and_duplicates() -> None:
    good = model("0", "0")
    with pytest.raises(ValueError, match="unknown provider"):
        Catalog(providers=(), models=(good,))
    from creditgate.catalog.service import ProviderConfig

    provider = ProviderConfig(name="p", base_url="http://p")
    with pytest.raises(ValueError, match="unique"):
        Catalog(providers=(provider,), models=(good, good))
