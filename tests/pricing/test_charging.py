"""Charging a priced call (apiKeyMode, markup, platform fee) and estimating a run."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from metering.pricing import (
    EstimateItem,
    TokenUsage,
    UnknownApiKeyMode,
    charge_exact_credits,
    estimate_credits,
    get_catalog,
)

NOW = datetime(2026, 11, 23, tzinfo=UTC)
USAGE = TokenUsage(input_tokens=1_200, output_tokens=300, cached_input_tokens=800)


def test_system_key_pays_the_catalog_price_times_the_markup() -> None:
    cost = get_catalog().price_call("openai", "gpt-4o", USAGE, NOW)
    # 1200 * 2.50 + 800 * 1.25 + 300 * 10 = 7000 micro-USD = $0.007 = 7 credits.
    assert cost.usd == Decimal("0.007")
    assert charge_exact_credits(cost, "system", Decimal(1), Decimal(0)) == Decimal(7)
    assert charge_exact_credits(cost, "system", Decimal("1.25"), Decimal(0)) == Decimal("8.75")


def test_own_key_pays_the_platform_fee_on_every_token() -> None:
    cost = get_catalog().price_call("openai", "gpt-4o", USAGE, NOW)
    assert charge_exact_credits(cost, "own", Decimal(3), Decimal(0)) == 0
    # 2300 tokens at $0.10 per million = $0.00023 = 0.23 credits, whatever the model costs.
    assert charge_exact_credits(cost, "own", Decimal(3), Decimal("0.10")) == Decimal("0.23")


def test_an_unknown_api_key_mode_is_a_permanent_error() -> None:
    cost = get_catalog().price_call("openai", "gpt-4o", USAGE, NOW)
    with pytest.raises(UnknownApiKeyMode) as error:
        charge_exact_credits(cost, "shared", Decimal(1), Decimal(0))
    assert error.value.code == "unknown_api_key_mode"


def test_exact_credits_keep_18_decimal_places_rounded_up() -> None:
    tiny = get_catalog().price_call(
        "openai", "gpt-5-nano", TokenUsage(input_tokens=1, output_tokens=0), NOW
    )
    assert tiny.usd == Decimal("0.00000005")
    third = charge_exact_credits(tiny, "system", Decimal(1) / 3, Decimal(0))
    assert third == Decimal("0.000016666666666667")


def test_estimate_prices_each_call_and_rounds_the_total_up_once() -> None:
    items = [
        # 1000 calls of 200 + 50 tokens on gpt-4o-mini: 0.06 credits each, 60 credits.
        EstimateItem(
            provider="openai", model="gpt-4o-mini", calls=1_000, input_tokens=200, output_tokens=50
        ),
        # 3 long-context calls on claude-sonnet-4: 250k * $6 + 1k * $22.50 = $1.5225 each.
        EstimateItem(
            provider="anthropic",
            model="claude-sonnet-4",
            calls=3,
            input_tokens=250_000,
            output_tokens=1_000,
        ),
        # One batch call of 1 token: 0.00125 credits, which the single rounding absorbs.
        EstimateItem(
            provider="openai",
            model="gpt-4o",
            calls=1,
            input_tokens=1,
            output_tokens=0,
            tier="batch",
        ),
    ]
    assert estimate_credits(get_catalog(), items, "system", Decimal(1), Decimal(0), NOW) == 4628
    doubled = estimate_credits(get_catalog(), items, "system", Decimal(2), Decimal(0), NOW)
    assert doubled == 9256
    assert estimate_credits(get_catalog(), items, "own", Decimal(1), Decimal(0), NOW) == 0


def test_an_empty_estimate_is_zero() -> None:
    assert estimate_credits(get_catalog(), [], "system", Decimal(1), Decimal(0), NOW) == 0
