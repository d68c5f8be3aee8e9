"""Models current in November 2026 against the prices their providers publish (USD per 1M)."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from metering.pricing import TokenUsage, get_catalog

NOW = datetime(2026, 11, 23, tzinfo=UTC)
MILLION = 1_000_000

# provider, model, input, cached input, cache write, output (short prompts, standard tier).
PUBLISHED = [
    ("anthropic", "claude-opus-5", "5", "0.50", "6.25", "25"),
    ("anthropic", "claude-opus-5-5", "4", "0.20", "5", "20"),
    ("anthropic", "claude-sonnet-5", "2", "0.20", "2.50", "10"),
    ("anthropic", "claude-sonnet-5-5", "2", "0.10", "2.50", "10"),
    ("anthropic", "claude-haiku-5-5", "0.10", "0.01", "0.125", "0.50"),
    ("openai", "gpt-5.4", "2.50", "0.25", "2.50", "15.00"),
    ("openai", "gpt-5.4-mini", "0.75", "0.075", "0.75", "4.50"),
    ("openai", "gpt-5.4-nano", "0.20", "0.02", "0.20", "1.25"),
    ("openai", "gpt-6.1-sol", "2.00", "0.10", "2.50", "10.00"),
    ("google", "gemini-3.1-pro-preview", "2.00", "0.20", "2.00", "12.00"),
    ("google", "gemini-3-flash-preview", "0.50", "0.05", "0.50", "3.00"),
    ("deepseek", "deepseek-flash", "0.30", "0.006", "0.30", "1.20"),
    ("deepseek", "deepseek-v4-pro", "1.32", "0.044", "1.32", "3.96"),
    ("xai", "grok-4.3", "1.25", "0.20", "1.25", "2.50"),
]


def usd(
    provider: str, model: str, *, at: datetime = NOW, tier: str = "standard", **tokens: int
) -> Decimal:
    usage = TokenUsage(**{"input_tokens": 0, "output_tokens": 0, **tokens})
    return get_catalog().price_call(provider, model, usage, at, tier).usd


@pytest.mark.parametrize(("provider", "model", "input_", "cached", "write", "output"), PUBLISHED)
def test_each_token_class_costs_the_published_price(
    provider: str, model: str, input_: str, cached: str, write: str, output: str
) -> None:
    # One million tokens of one class at a time would cross some long-context thresholds, so price
    # 50,000 tokens and scale.
    scale = MILLION // 50_000
    assert usd(provider, model, input_tokens=50_000) * scale == Decimal(input_)
    assert usd(provider, model, cached_input_tokens=50_000) * scale == Decimal(cached)
    assert usd(provider, model, cache_write_tokens=50_000) * scale == Decimal(write)
    assert usd(provider, model, output_tokens=50_000) * scale == Decimal(output)


def test_gpt_5_4_long_prompts_cost_double_input_and_one_and_a_half_output() -> None:
    # 272,001 prompt tokens and 1,000 output: $5 input and $22.50 output per 1M.
    cost = usd("openai", "gpt-5.4", input_tokens=272_001, output_tokens=1_000)
    assert cost == Decimal("272001") * Decimal("5.00") / MILLION + Decimal("0.0225")
    at_threshold = usd("openai", "gpt-5.4", input_tokens=272_000)
    assert at_threshold == Decimal("272000") * Decimal("2.50") / MILLION


def test_gemini_3_1_pro_long_prompts_and_batch() -> None:
    long_call = {"input_tokens": 150_000, "cached_input_tokens": 60_000, "output_tokens": 10_000}
    expected = (
        Decimal(150_000) * 4 + Decimal(60_000) * Decimal("0.40") + Decimal(10_000) * 18
    ) / MILLION
    assert usd("google", "gemini-3.1-pro-preview", **long_call) == expected
    assert usd("google", "gemini-3.1-pro-preview", tier="batch", **long_call) == expected / 2


def test_haiku_5_5_costs_five_times_more_above_100k_prompt_tokens() -> None:
    short = usd("anthropic", "claude-haiku-5-5", input_tokens=100_000, output_tokens=1_000)
    assert short == Decimal("0.0105")
    long = usd(
        "anthropic",
        "claude-haiku-5-5",
        input_tokens=100_000,
        cache_write_tokens=1,
        output_tokens=1_000,
    )
    assert (
        long
        == (Decimal(100_000) * Decimal("0.50") + Decimal("0.625") + 1_000 * Decimal("2.50"))
        / MILLION
    )


def test_claude_opus_5_batch_is_half_price() -> None:
    tokens = {"input_tokens": 10_000, "cached_input_tokens": 20_000, "output_tokens": 2_000}
    standard = usd("anthropic", "claude-opus-5", **tokens)
    assert standard == Decimal("0.05") + Decimal("0.01") + Decimal("0.05")
    assert usd("anthropic", "claude-opus-5", tier="batch", **tokens) == standard / 2


def test_sonnet_5_5_cache_read_cut_is_dated() -> None:
    before = datetime(2026, 10, 6, 23, 59, tzinfo=UTC)
    assert usd("anthropic", "claude-sonnet-5-5", at=before, cached_input_tokens=MILLION) == Decimal(
        "0.20"
    )
    assert usd("anthropic", "claude-sonnet-5-5", cached_input_tokens=MILLION) == Decimal("0.10")


def test_deepseek_v4_flash_price_history_is_kept() -> None:
    def flash(at: datetime) -> Decimal:
        return usd("deepseek", "deepseek-v4-flash", at=at, input_tokens=MILLION)

    assert flash(datetime(2026, 5, 1, tzinfo=UTC)) == Decimal("0.14")
    assert flash(datetime(2026, 8, 20, tzinfo=UTC)) == Decimal("0.44")
    assert flash(NOW) == Decimal("0.30")


def test_new_entries_were_checked_today_against_a_provider_page() -> None:
    catalog = get_catalog()
    for provider, model, *_ in PUBLISHED:
        entry = catalog.resolve(provider, model).model
        assert entry.checked.isoformat() == "2026-11-23"
        assert entry.source.startswith("https://")
    assert catalog.resolve("openai", "openai/gpt-5.4-2026-03-05").model.id == "gpt-5.4"
