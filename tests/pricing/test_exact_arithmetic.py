"""Exact arithmetic at its edges: signed zeros, costs too long to be exact, the spelling memory."""

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, Inexact
from pathlib import Path

import pytest

from metering.pricing import (
    TokenUsage,
    UnknownModel,
    UnknownProvider,
    UnsupportedTier,
    get_catalog,
    load_catalog,
)
from metering.pricing import catalog as catalog_module
from metering.pricing.calculator import AppliedRates, applied_rates, cost_usd
from tests.pricing.helpers import MINIMAL


@pytest.mark.parametrize("zero", ["-0", "-0.00", "-0E+3"])
def test_negative_zero_rates_keep_their_sign_in_the_cost(zero: str) -> None:
    rates = dict.fromkeys(
        ("input", "cached_input", "cache_write", "output", "reasoning"), Decimal(zero)
    )
    usage = TokenUsage(input_tokens=5, output_tokens=3, reasoning_tokens=1)
    half = dict.fromkeys(rates, Decimal("0.5"))
    usd = AppliedRates.of(rates, half).usd(usage)
    assert usd.is_signed()
    assert outcome(lambda: usd) == outcome(lambda: cost_usd(applied_rates(rates, half), usage))


def outcome(compute: Callable[[], Decimal]) -> tuple[str, object]:
    try:
        result = compute()
    except ArithmeticError as error:
        return "raises", type(error)
    return str(result), result.as_tuple()


def test_a_cost_too_long_for_the_exact_context_still_raises() -> None:
    huge = TokenUsage(input_tokens=10**85, output_tokens=1)
    with pytest.raises(Inexact):
        get_catalog().price_call("openai", "gpt-4o", huge, datetime(2026, 1, 1, tzinfo=UTC))


def test_names_are_resolved_once_per_spelling_and_unknown_ones_are_never_kept(
    write_catalog: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_module, "MAX_SPELLINGS", 3)
    catalog = load_catalog(write_catalog(MINIMAL))
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=0)
    at = datetime(2025, 6, 1, tzinfo=UTC)
    spellings = [" thinker-1", "THINKER-1", "acme/thinker-1", "thinker-1-2025-01-01", "thinker-1 "]
    for _ in range(2):
        for spelling in spellings:
            cost = catalog.price_call("Acme", spelling, usage, at, "batch")
            assert (cost.model, str(cost.usd)) == ("thinker-1", "0.500000000")
            assert len(catalog._spellings) <= 3
    for repeat in range(3):
        with pytest.raises(UnknownModel, match="unknown model 'thinker-2' for provider 'acme'"):
            catalog.price_call("acme", "thinker-2", usage, at)
        with pytest.raises(UnknownProvider, match="unknown provider 'acne'"):
            catalog.price_call("acne", "thinker-1", usage, at)
        with pytest.raises(UnsupportedTier, match=f"no 'flex{repeat}' tier"):
            catalog.price_call("acme", "thinker-1", usage, at, f"flex{repeat}")
    assert all(model in spellings and tier == "batch" for _, model, tier in catalog._spellings)
