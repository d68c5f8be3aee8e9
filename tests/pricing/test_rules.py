"""The pricing rules: disjoint token classes, long context, tiers, effective dates, aliases."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from metering.pricing import (
    InvalidUsage,
    NoPriceAt,
    TokenUsage,
    UnknownModel,
    UnknownProvider,
    UnsupportedTier,
    get_catalog,
    load_catalog,
)
from tests.pricing.helpers import MINIMAL

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def usd(
    provider: str, model: str, *, at: datetime = NOW, tier: str = "standard", **tokens: int
) -> Decimal:
    usage = TokenUsage(**{"input_tokens": 0, "output_tokens": 0, **tokens})
    return get_catalog().price_call(provider, model, usage, at, tier).usd


def test_each_token_class_is_billed_once_at_its_own_rate() -> None:
    # claude-sonnet-4-5: input 3, cache read 0.30, cache write 3.75, output 15 (USD per 1M).
    cost = usd(
        "anthropic",
        "claude-sonnet-4-5",
        input_tokens=1_000,
        cached_input_tokens=10_000,
        cache_write_tokens=2_000,
        output_tokens=500,
        reasoning_tokens=200,
    )
    assert cost == Decimal("0.003") + Decimal("0.003") + Decimal("0.0075") + Decimal("0.0075")


def test_reasoning_is_billed_as_output_unless_priced_apart(
    write_catalog: Callable[[str], Path],
) -> None:
    assert usd("openai", "o3", input_tokens=0, output_tokens=1_000, reasoning_tokens=900) == usd(
        "openai", "o3", output_tokens=1_000
    )
    catalog = load_catalog(write_catalog(MINIMAL))
    usage = TokenUsage(input_tokens=0, output_tokens=1_000_000, reasoning_tokens=250_000)
    cost = catalog.price_call("acme", "thinker-1", usage, NOW)
    assert cost.usd == Decimal("3.00") + Decimal("2.00")


@pytest.mark.parametrize(
    ("provider", "model", "threshold", "short_input", "long_input", "long_output"),
    [
        ("anthropic", "claude-sonnet-4", 200_000, "3", "6", "22.50"),
        ("anthropic", "claude-sonnet-4-5", 200_000, "3", "6", "22.50"),
        ("google", "gemini-2.5-pro", 200_000, "1.25", "2.50", "15.00"),
        ("xai", "grok-4", 128_000, "3.00", "6.00", "30.00"),
    ],
)
def test_long_context_applies_to_the_whole_call_once_the_prompt_passes_the_threshold(
    provider: str,
    model: str,
    threshold: int,
    short_input: str,
    long_input: str,
    long_output: str,
) -> None:
    catalog = get_catalog()
    at_threshold = TokenUsage(input_tokens=threshold, output_tokens=0)
    cost = catalog.price_call(provider, model, at_threshold, NOW)
    assert not cost.long_context
    assert Decimal(cost.prices["input"]) == Decimal(short_input)
    # One token more, counted across the whole prompt: cache reads and writes count too.
    split = TokenUsage(
        input_tokens=threshold - 1_000,
        cached_input_tokens=600,
        cache_write_tokens=401,
        output_tokens=1_000,
    )
    cost = catalog.price_call(provider, model, split, NOW)
    assert cost.long_context
    assert Decimal(cost.prices["input"]) == Decimal(long_input)
    assert Decimal(cost.prices["output"]) == Decimal(long_output)


def test_sonnet_long_context_keeps_the_cache_multipliers() -> None:
    cost = get_catalog().price_call(
        "anthropic", "claude-sonnet-4", TokenUsage(input_tokens=250_000, output_tokens=0), NOW
    )
    assert cost.prices["cache_write"] == "7.50"
    assert cost.prices["cached_input"] == "0.60"


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-4.1"), ("anthropic", "claude-opus-4-1"), ("xai", "grok-4.3")],
)
def test_a_batch_tier_of_one_multiplier_applies_it_to_every_rate(provider: str, model: str) -> None:
    tokens = {"input_tokens": 10_000, "cached_input_tokens": 5_000, "output_tokens": 2_000}
    standard = usd(provider, model, **tokens)
    multiplier = get_catalog().resolve(provider, model).tiers()["batch"]
    assert set(multiplier.values()) in ({Decimal("0.5")}, {Decimal("0.8")})
    assert usd(provider, model, tier="batch", **tokens) == standard * multiplier["input"]


def test_a_tier_priced_per_class_keeps_the_classes_it_names_apart() -> None:
    # Gemini's batch mode halves input and output; cache reads keep the standard rate.
    cost = get_catalog().price_call(
        "google", "gemini-2.5-flash", TokenUsage(100, 10, cached_input_tokens=40), NOW, "batch"
    )
    assert (cost.prices["input"], cost.prices["output"]) == ("0.150", "1.250")
    assert cost.prices["cached_input"] == "0.03"
    assert cost.usd == (100 * Decimal("0.15") + 10 * Decimal("1.25") + 40 * Decimal("0.03")) / (
        10**6
    )


def test_batch_applies_on_top_of_long_context() -> None:
    long_call = {"input_tokens": 300_000, "output_tokens": 1_000}
    assert usd("google", "gemini-2.5-pro", tier="batch", **long_call) == Decimal("0.3825")
    # grok-4.3 doubles every rate from 200,000 prompt tokens: 199,999 is short, 200,000 is long.
    assert usd("xai", "grok-4.3", input_tokens=199_999) == Decimal("0.24999875")
    assert usd("xai", "grok-4.3", input_tokens=200_000) == Decimal("0.5")
    assert usd("xai", "grok-4.3", tier="batch", input_tokens=200_000) == Decimal("0.4")


def test_a_tier_the_model_does_not_price_is_refused() -> None:
    with pytest.raises(UnsupportedTier) as error:
        usd("openai", "gpt-4.1", tier="flex", input_tokens=1)
    assert error.value.code == "unsupported_tier"
    assert "batch" in str(error.value)
    assert usd("openai", "o3", tier="flex", input_tokens=1_000_000) == Decimal("1.0000")
    with pytest.raises(UnsupportedTier):
        usd("deepseek", "deepseek-chat", tier="batch", input_tokens=1)


def test_o3_price_cut_takes_effect_at_its_date() -> None:
    cut = datetime(2025, 6, 10, tzinfo=UTC)
    before = usd("openai", "o3", at=cut - timedelta(microseconds=1), input_tokens=1_000_000)
    assert before == Decimal("10.00")
    assert usd("openai", "o3", at=cut, input_tokens=1_000_000) == Decimal("2.00")


def test_deepseek_prices_follow_each_published_change() -> None:
    change = datetime(2025, 9, 5, 16, tzinfo=UTC)
    tokens = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    assert usd("deepseek", "deepseek-chat", at=change - timedelta(seconds=1), **tokens) == Decimal(
        "1.37"
    )
    assert usd("deepseek", "deepseek-chat", at=change, **tokens) == Decimal("2.24")
    noon = datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert usd("deepseek", "deepseek-reasoner", at=noon, **tokens) == Decimal("2.74")
    assert usd("deepseek", "deepseek-reasoner", at=datetime(2025, 10, 1, tzinfo=UTC), **tokens) == (
        Decimal("0.70")
    )


def test_gpt_4o_cached_tokens_cost_full_price_before_prompt_caching_existed() -> None:
    tokens = {"cached_input_tokens": 1_000_000}
    assert usd("openai", "gpt-4o", at=datetime(2024, 9, 1, tzinfo=UTC), **tokens) == Decimal("2.50")
    assert usd("openai", "gpt-4o", at=datetime(2024, 10, 1, tzinfo=UTC), **tokens) == Decimal(
        "1.25"
    )


def test_a_call_before_the_first_price_has_no_price() -> None:
    with pytest.raises(NoPriceAt) as error:
        usd("openai", "gpt-5", at=datetime(2025, 8, 6, tzinfo=UTC), input_tokens=1)
    assert error.value.code == "no_price_at"


def test_a_naive_timestamp_is_refused() -> None:
    with pytest.raises(InvalidUsage):
        usd("openai", "gpt-5", at=datetime(2025, 9, 1), input_tokens=1)  # noqa: DTZ001


def test_the_price_in_force_is_recorded_with_the_cost() -> None:
    cost = get_catalog().price_call(
        "openai", "o3", TokenUsage(input_tokens=1, output_tokens=1), NOW
    )
    assert cost.effective_from == datetime(2025, 6, 10, tzinfo=UTC)
    assert cost.catalog_version == get_catalog().version
    assert cost.audit()["usd"] == str(cost.usd)


@pytest.mark.parametrize(
    ("provider", "model", "canonical"),
    [
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
        ("openai", "openai/gpt-4o", "gpt-4o"),
        ("openai", "GPT-4o-Mini-2024-07-18", "gpt-4o-mini"),
        ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("anthropic", "anthropic/claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude", "claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("gemini", "models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("google", "google/gemini-2.5-flash", "gemini-2.5-flash"),
        ("xai", "grok-4", "grok-4-0709"),
        (
            "together",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        ),
        (
            "together",
            "together/llama-4-maverick",
            "meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8",
        ),
    ],
)
def test_aliases_resolve_to_the_canonical_model(provider: str, model: str, canonical: str) -> None:
    cost = get_catalog().price_call(
        provider, model, TokenUsage(input_tokens=1, output_tokens=1), NOW
    )
    assert cost.model == canonical


def test_gpt_4o_first_snapshot_keeps_its_own_price() -> None:
    assert usd("openai", "gpt-4o-2024-05-13", input_tokens=1_000_000) == Decimal("5.00")


def test_an_unknown_model_names_the_closest_known_models() -> None:
    with pytest.raises(UnknownModel) as error:
        usd("anthropic", "claude-sonet-4.5", input_tokens=1)
    assert error.value.code == "unknown_model"
    assert "claude-sonnet-4-5" in str(error.value)


def test_a_provider_prefix_of_another_provider_is_not_stripped() -> None:
    with pytest.raises(UnknownModel):
        usd("openai", "anthropic/gpt-4o", input_tokens=1)


def test_an_unknown_provider_names_the_closest_known_providers() -> None:
    with pytest.raises(UnknownProvider) as error:
        usd("opnai", "gpt-4o", input_tokens=1)
    assert error.value.code == "unknown_provider"
    assert "openai" in str(error.value)


@pytest.mark.parametrize(
    "tokens",
    [
        {"input_tokens": -1, "output_tokens": 0},
        {"input_tokens": 0, "output_tokens": 1, "reasoning_tokens": 2},
        {"input_tokens": 1.0, "output_tokens": 0},
        {"input_tokens": True, "output_tokens": 0},
    ],
)
def test_impossible_usage_is_refused(tokens: dict[str, object]) -> None:
    with pytest.raises(InvalidUsage) as error:
        TokenUsage(**tokens)  # type: ignore[arg-type]
    assert error.value.code == "invalid_usage"
