"""Prices in credits: the worst-case hold and the actual charge for a request."""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.catalog.service import ModelConfig
from creditgate.db.models import AppSetting
from creditgate.money import charge_for_cost, check_increment

INCREMENT_KEY = "credit_increment"


async def current_increment(session: AsyncSession, *, default: Decimal) -> Decimal:
    """The admin-set minimum increment (0.01, 0.1 or 1.0); ``default`` until one is set."""
    value = await session.scalar(select(AppSetting.value).where(AppSetting.key == INCREMENT_KEY))
    return check_increment(Decimal(value)) if value is not None else default


def estimate_prompt_tokens(texts: list[str]) -> int:
    """A deliberately high estimate: one token per 3 UTF-8 bytes, plus per-message framing."""
    return sum(len(t.encode()) // 3 + 1 for t in texts) + 4 * len(texts) + 3


def credits_for(
    model: ModelConfig,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    margin: Decimal,
    credit_value_usd: Decimal,
    increment: Decimal,
    images: int = 0,
) -> Decimal:
    cost = model.cost_usd(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, images=images)
    return charge_for_cost(cost_usd=cost, margin=margin, credit_value_usd=credit_value_usd, increment=increment)


def max_affordable_tokens(
    model: ModelConfig,
    *,
    balance: Decimal,
    prompt_tokens: int,
    margin: Decimal,
    credit_value_usd: Decimal,
    increment: Decimal,
) -> int:
    """The most completion tokens ``balance`` pays for after the prompt (0 if not even the prompt)."""
    # A charge rounds up to the increment, so only whole increments of the balance can be spent.
    spendable = (balance / increment).to_integral_value(rounding=ROUND_FLOOR) * increment
    budget_usd = spendable * credit_value_usd / margin - model.input_per_1k * prompt_tokens / 1000
    if budget_usd < 0:
        return 0
    if model.output_per_1k == 0:
        return model.max_output_tokens
    return min(model.max_output_tokens, int(budget_usd * 1000 / model.output_per_1k))
