"""Hypothesis strategies for money, usage and chat requests."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from creditgate.money import ALLOWED_INCREMENTS


def credit_amounts(*, min_value: str = "0.01", max_value: str = "100000") -> st.SearchStrategy[Decimal]:
    """Credit amounts with at most two decimals."""
    return st.decimals(min_value=Decimal(min_value), max_value=Decimal(max_value), places=2)


def increments() -> st.SearchStrategy[Decimal]:
    """One of the allowed minimum increments (0.01, 0.1, 1.0)."""
    return st.sampled_from(ALLOWED_INCREMENTS)


def vendor_costs() -> st.SearchStrategy[Decimal]:
    """Vendor costs in USD, from zero to $100, down to 1e-9 dollars."""
    return st.decimals(min_value=Decimal(0), max_value=Decimal(100), places=9)


def margins() -> st.SearchStrategy[Decimal]:
    return st.decimals(min_value=Decimal("0.01"), max_value=Decimal(10), places=4)


def token_usage() -> st.SearchStrategy[tuple[int, int]]:
    """(prompt_tokens, completion_tokens)."""
    return st.tuples(st.integers(0, 200_000), st.integers(0, 100_000))


def chat_requests(models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid OpenAI chat request bodies for one of ``models``."""
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=200)}
    )
    return st.fixed_dictionaries(
        {"model": st.sampled_from(models), "messages": st.lists(message, min_size=1, max_size=4)},
        optional={"max_tokens": st.integers(1, 2000), "temperature": st.floats(0, 2)},
    )
