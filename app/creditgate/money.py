"""The one representation of credits and the one rounding function every charge goes through.

Credits are ``Decimal`` values that are always a whole number of hundredths (0.01 credit).
In the database they are stored as integer hundredths (``BigInteger``) so that sums and
conditional updates are exact on every backend, SQLite included. ``$1 = 100 credits`` by
default (``credit_value_usd = 0.01``).
"""

from __future__ import annotations

import decimal
from decimal import ROUND_CEILING, Decimal

CENT = Decimal("0.01")
ALLOWED_INCREMENTS: tuple[Decimal, ...] = (Decimal("0.01"), Decimal("0.1"), Decimal("1.0"))

# Enough digits that token counts × per-1K prices × margins never lose precision.
_CTX = decimal.Context(prec=60, rounding=ROUND_CEILING)


def credits(value: Decimal | int | str) -> Decimal:
    """Parse a credit amount that must already be a whole number of hundredths."""
    amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError("credit amount must be finite")
    if amount != amount.quantize(CENT, context=_CTX):
        raise ValueError(f"credit amount {value} has more than two decimal places")
    return amount.quantize(CENT)


def to_hundredths(amount: Decimal) -> int:
    """Credits → integer hundredths for storage (exact; raises on sub-cent input)."""
    return int(credits(amount) * 100)


def from_hundredths(units: int) -> Decimal:
    """Integer hundredths from storage → credits."""
    return (Decimal(units) / 100).quantize(CENT)


def check_increment(increment: Decimal) -> Decimal:
    """Return ``increment`` if it is one of the allowed minimum increments, else raise ``ValueError``."""
    for allowed in ALLOWED_INCREMENTS:
        if increment == allowed:
            return allowed
    allowed_list = ", ".join(str(a) for a in ALLOWED_INCREMENTS)
    raise ValueError(f"credit increment must be one of {allowed_list}")


def charge_for_cost(*, cost_usd: Decimal, margin: Decimal, credit_value_usd: Decimal, increment: Decimal) -> Decimal:
    """The credits charged for a vendor cost: ceil(cost × margin / credit value) to the increment.

    Zero cost charges zero. The result is never below the exact price and less than one
    increment above it.
    """
    if cost_usd < 0:
        raise ValueError("vendor cost cannot be negative")
    if margin <= 0 or credit_value_usd <= 0:
        raise ValueError("margin and credit value must be positive")
    check_increment(increment)
    exact = _CTX.divide(_CTX.multiply(cost_usd, margin), credit_value_usd)
    steps = _CTX.divide(exact, increment).to_integral_value(rounding=ROUND_CEILING)
    return _CTX.multiply(steps, increment).quantize(CENT)


def usd_to_credits(usd: Decimal, *, credit_value_usd: Decimal) -> Decimal:
    """Dollars → credits at the configured credit value, rounded down to 0.01 (never creates credits)."""
    return _CTX.divide(usd, credit_value_usd).quantize(CENT, rounding=decimal.ROUND_FLOOR)
