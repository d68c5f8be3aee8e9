"""Prices and credits against an independent exact recomputation, value and string alike.

The catalog prices calls at rates applied once per model, tier and period; these tests
recompute every cost from the catalog's raw rates in a wide decimal context and require the same
`Decimal`: equal in value and in `str()` (the ledger keeps the strings).
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import (
    ROUND_CEILING,
    Context,
    Decimal,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.pricing import (
    TokenUsage,
    UnknownModel,
    UnknownProvider,
    UnsupportedTier,
    charge_exact_credits,
    get_catalog,
    load_catalog,
)
from metering.pricing import catalog as catalog_module
from metering.pricing.calculator import AppliedRates, applied_rates, cost_usd
from metering.pricing.schema import PricePeriod, Rates
from tests.pricing.conftest import MINIMAL

WIDE = Context(prec=400, traps=[Inexact, InvalidOperation, Overflow])
MODELS = list(get_catalog().models())
MAX_TOKENS = 100_000_000
MARKUPS = [Decimal(1), Decimal("1.5"), Decimal("1.25"), Decimal("0.8"), Decimal("2.000")]
FEES = [Decimal(0), Decimal("0.5"), Decimal("0.10"), Decimal("0.123")]


def raw_rates(rates: Rates) -> dict[str, Decimal]:
    """The file's rates per class, missing ones falling back as the catalog rules say."""
    return {
        "input": rates.input,
        "cached_input": rates.input if rates.cached_input is None else rates.cached_input,
        "cache_write": rates.input if rates.cache_write is None else rates.cache_write,
        "output": rates.output,
        "reasoning": rates.output if rates.reasoning is None else rates.reasoning,
    }


def expected_cost(
    period: PricePeriod, multiplier: Decimal, usage: TokenUsage
) -> tuple[Decimal, dict[str, str], bool]:
    """USD, price strings and long-context flag of one call, recomputed from the raw rates."""
    prompt = usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens
    long_context = (
        period.long_context is not None and prompt > period.long_context.above_prompt_tokens
    )
    rates = raw_rates(period.long_context if long_context and period.long_context else period)
    with localcontext(WIDE):
        applied = {name: rate * multiplier for name, rate in rates.items()}
        micro_usd = (
            usage.input_tokens * applied["input"]
            + usage.cached_input_tokens * applied["cached_input"]
            + usage.cache_write_tokens * applied["cache_write"]
            + (usage.output_tokens - usage.reasoning_tokens) * applied["output"]
            + usage.reasoning_tokens * applied["reasoning"]
        )
        usd = micro_usd.scaleb(-6)
    return usd, {name: str(rate) for name, rate in applied.items()}, long_context


def expected_credits(
    usd: Decimal, usage: TokenUsage, mode: str, markup: Decimal, fee: Decimal
) -> Decimal:
    with localcontext(WIDE):
        charged = usd * markup if mode == "system" else fee * usage.total_tokens / 1_000_000
        return (charged * 1000).quantize(Decimal("1E-18"), rounding=ROUND_CEILING)


def multiplier_of(index: int, tier: str) -> Decimal:
    entry = MODELS[index]
    tiers = entry.provider.tiers if entry.model.tiers is None else entry.model.tiers
    return Decimal(1) if tier == "standard" else tiers[tier]


@st.composite
def priced_calls(draw: st.DrawFn) -> tuple[int, str, int, datetime, TokenUsage]:
    """A model, one of its tiers, one of its periods, a time in that period and a usage."""
    index = draw(st.integers(0, len(MODELS) - 1))
    entry = MODELS[index]
    tier = draw(st.sampled_from(list(entry.tiers())))
    prices = entry.model.prices
    period = draw(st.integers(0, len(prices) - 1))
    start = prices[period].from_
    end = prices[period + 1].from_ if period + 1 < len(prices) else start + timedelta(days=900)
    at = start + draw(st.timedeltas(timedelta(0), end - start - timedelta(microseconds=1)))
    threshold = prices[period].long_context
    near = threshold.above_prompt_tokens if threshold else 200_000
    counts = st.one_of(
        st.integers(0, 100), st.integers(0, MAX_TOKENS), st.integers(near - 3, near + 3)
    )
    output = draw(counts)
    usage = TokenUsage(
        input_tokens=draw(counts),
        output_tokens=output,
        cached_input_tokens=draw(st.one_of(st.just(0), counts)),
        cache_write_tokens=draw(st.one_of(st.just(0), counts)),
        reasoning_tokens=draw(st.integers(0, output)),
    )
    return index, tier, period, at, usage


@settings(max_examples=600, deadline=None)
@given(
    call=priced_calls(),
    mode=st.sampled_from(["system", "own"]),
    markup=st.sampled_from(MARKUPS),
    fee=st.sampled_from(FEES),
)
def test_every_call_costs_what_an_exact_recomputation_gives(
    call: tuple[int, str, int, datetime, TokenUsage], mode: str, markup: Decimal, fee: Decimal
) -> None:
    index, tier, period_index, at, usage = call
    entry = MODELS[index]
    period = entry.model.prices[period_index]
    usd, prices, long_context = expected_cost(period, multiplier_of(index, tier), usage)

    cost = get_catalog().price_call(entry.provider_id, entry.model.id, usage, at, tier)

    assert (cost.provider, cost.model, cost.tier) == (entry.provider_id, entry.model.id, tier)
    assert (cost.usage, cost.long_context, cost.effective_from) == (
        usage,
        long_context,
        period.from_,
    )
    assert cost.usd == usd
    assert str(cost.usd) == str(usd)
    assert cost.prices == prices
    credits = charge_exact_credits(cost, mode, markup, fee)
    assert str(credits) == str(expected_credits(usd, usage, mode, markup, fee))


@pytest.mark.parametrize("index", range(len(MODELS)), ids=[m.model.id for m in MODELS])
def test_every_model_tier_period_and_context_length_of_the_catalog(index: int) -> None:
    entry = MODELS[index]
    for tier in entry.tiers():
        for period in entry.model.prices:
            threshold = period.long_context.above_prompt_tokens if period.long_context else 1000
            for usage in (
                TokenUsage(input_tokens=0, output_tokens=0),
                TokenUsage(input_tokens=threshold, output_tokens=7, cached_input_tokens=0),
                TokenUsage(input_tokens=threshold - 2, output_tokens=9, cache_write_tokens=3),
                TokenUsage(1_234_567, 7_654_321, 3_333_333, 444_444, 5_555),
            ):
                cost = get_catalog().price_call(
                    entry.provider_id, entry.model.id, usage, period.from_, tier
                )
                usd, prices, long_context = expected_cost(period, multiplier_of(index, tier), usage)
                assert (str(cost.usd), cost.prices, cost.long_context) == (
                    str(usd),
                    prices,
                    long_context,
                )


@pytest.mark.parametrize("zero", ["-0", "-0.00", "-0E+3"])
def test_negative_zero_rates_keep_their_sign_in_the_cost(zero: str) -> None:
    rates = dict.fromkeys(
        ("input", "cached_input", "cache_write", "output", "reasoning"), Decimal(zero)
    )
    usage = TokenUsage(input_tokens=5, output_tokens=3, reasoning_tokens=1)
    usd = AppliedRates.of(rates, Decimal("0.5")).usd(usage)
    assert usd.is_signed()
    assert outcome(lambda: usd) == outcome(
        lambda: cost_usd(applied_rates(rates, Decimal("0.5")), usage)
    )


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
