"""The one place where money changes unit. Never float.

Units: USD as `Decimal`; credits as `int` when charged, as `Decimal` when exact (fractional).
1 credit = $0.001.
"""

from decimal import ROUND_CEILING, Decimal

USD_PER_CREDIT = Decimal("0.001")
EXACT_CREDIT_PLACES = 18
"""Exact credits are kept to 18 decimal places (NUMERIC(38, 18) in PostgreSQL)."""
_QUANTUM = Decimal(1).scaleb(-EXACT_CREDIT_PLACES)


def usd_to_exact_credits(usd: Decimal) -> Decimal:
    """Exact (fractional) credits for an amount of USD, rounded up at the 18th decimal place."""
    return (usd / USD_PER_CREDIT).quantize(_QUANTUM, rounding=ROUND_CEILING)


def whole_credits(exact_credits: Decimal) -> int:
    """The whole credits charged for an exact running total: always rounded up."""
    return int(exact_credits.to_integral_value(rounding=ROUND_CEILING))


def credits_due(exact_before: Decimal, exact_added: Decimal) -> int:
    """Whole credits to charge when `exact_added` joins a running total of `exact_before`.

    Charging this for every call keeps the sum charged equal to `ceil(total)`: nothing is rounded up
    per call, nothing leaks downward.
    """
    return whole_credits(exact_before + exact_added) - whole_credits(exact_before)
