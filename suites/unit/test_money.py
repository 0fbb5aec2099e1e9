"""app/money.py: the one rounding function."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from creditgate.money import (
    charge_for_cost,
    check_increment,
    credits,
    from_hundredths,
    to_hundredths,
    usd_to_credits,
)
from creditgate.testing.strategies import increments, margins, vendor_costs

CV = Decimal("0.01")


@pytest.mark.parametrize(
    ("cost", "margin", "increment", "expected"),
    [
        ("0.00004", "1.5", "0.1", "0.10"),
        ("0.00004", "1.5", "0.01", "0.01"),
        ("0.00004", "1.5", "1.0", "1.00"),
        ("0", "1.5", "0.1", "0.00"),
        ("0", "1.5", "1.0", "0.00"),
        ("1", "1.5", "0.1", "150.00"),
        ("0.0667", "1.5", "0.01", "10.01"),  # 10.005 rounds up, never half-even
        ("0.01", "1", "0.01", "1.00"),  # exact multiples are not bumped
    ],
)
def test_charge_examples(cost: str, margin: str, increment: str, expected: str) -> None:
    charged = charge_for_cost(
        cost_usd=Decimal(cost), margin=Decimal(margin), credit_value_usd=CV, increment=Decimal(increment)
    )
    assert charged == Decimal(expected)
    assert str(charged) == expected


@given(cost=vendor_costs(), margin=margins(), increment=increments())
def test_charge_bounds(cost: Decimal, margin: Decimal, increment: Decimal) -> None:
    exact = cost * margin / CV
    charged = charge_for_cost(cost_usd=cost, margin=margin, credit_value_usd=CV, increment=increment)
    assert charged >= exact
    assert charged - exact < increment
    assert charged % increment == 0
    assert (charged == 0) == (exact == 0)


@given(a=vendor_costs(), b=vendor_costs(), margin=margins(), increment=increments())
def test_charge_monotonic(a: Decimal, b: Decimal, margin: Decimal, increment: Decimal) -> None:
    lo, hi = sorted((a, b))
    kw = {"margin": margin, "credit_value_usd": CV, "increment": increment}
    assert charge_for_cost(cost_usd=lo, **kw) <= charge_for_cost(cost_usd=hi, **kw)


@given(units=st.integers(min_value=-(10**15), max_value=10**15))
def test_hundredths_round_trip(units: int) -> None:
    assert to_hundredths(from_hundredths(units)) == units


def test_no_drift_over_a_million_small_charges() -> None:
    charge = charge_for_cost(
        cost_usd=Decimal("0.00004"), margin=Decimal("1.5"), credit_value_usd=CV, increment=Decimal("0.01")
    )
    total_units = sum(to_hundredths(charge) for _ in range(1_000_000))
    assert from_hundredths(total_units) == Decimal("10000.00")
    assert sum([charge] * 1_000_000, Decimal(0)) == Decimal("10000.00")


@pytest.mark.parametrize("bad", ["0.001", "1.005", "NaN", "Infinity"])
def test_credits_rejects_sub_cent_and_non_finite(bad: str) -> None:
    with pytest.raises(ValueError):
        credits(bad)


@pytest.mark.parametrize("bad", ["0.05", "10", "0"])
def test_increment_must_be_allowed(bad: str) -> None:
    with pytest.raises(ValueError, match=r"0\.01, 0\.1, 1\.0"):
        check_increment(Decimal(bad))


def test_charge_rejects_negative_cost_and_bad_margin() -> None:
    with pytest.raises(ValueError):
        charge_for_cost(cost_usd=Decimal(-1), margin=Decimal(1), credit_value_usd=CV, increment=Decimal("0.1"))
    with pytest.raises(ValueError):
        charge_for_cost(cost_usd=Decimal(1), margin=Decimal(0), credit_value_usd=CV, increment=Decimal("0.1"))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("NaN", "credit amount must be finite"),
        ("Infinity", "credit amount must be finite"),
        ("1.005", "credit amount 1.005 has more than two decimal places"),
    ],
)
def test_credit_parse_errors_say_what_is_wrong(bad: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        credits(bad)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("cost", "margin", "credit_value", "message"),
    [
        ("-0.01", "1", "0.01", "vendor cost cannot be negative"),
        ("1", "0", "0.01", "margin and credit value must be positive"),
        ("1", "-1", "0.01", "margin and credit value must be positive"),
        ("1", "1", "0", "margin and credit value must be positive"),
        ("1", "1", "-0.01", "margin and credit value must be positive"),
    ],
)
def test_charge_errors_say_what_is_wrong(cost: str, margin: str, credit_value: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        charge_for_cost(
            cost_usd=Decimal(cost), margin=Decimal(margin), credit_value_usd=Decimal(credit_value), increment=CV
        )
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("usd", "credit_value", "expected"),
    [
        ("10", "0.01", "1000.00"),
        ("0.019", "0.01", "1.90"),
        ("0.00999", "0.01", "0.99"),  # rounds down, never half-even up to 1.00: top-ups never create credits
        ("0.05", "0.02", "2.50"),
        ("0.001", "0.01", "0.10"),
        ("0.0000999", "0.01", "0.00"),
    ],
)
def test_usd_to_credits_rounds_down_to_the_cent(usd: str, credit_value: str, expected: str) -> None:
    result = usd_to_credits(Decimal(usd), credit_value_usd=Decimal(credit_value))
    assert result == Decimal(expected)
    assert result.as_tuple().exponent == -2


@given(usd=st.decimals(min_value=0, max_value=10**6, places=6))
def test_usd_to_credits_never_exceeds_the_payment(usd: Decimal) -> None:
    result = usd_to_credits(usd, credit_value_usd=CV)
    assert result * CV <= usd < (result + Decimal("0.01")) * CV
