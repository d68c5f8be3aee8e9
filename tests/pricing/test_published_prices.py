"""The packaged catalog against the providers' published prices (USD per million tokens)."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from metering.pricing import TokenUsage, get_catalog

NOW = datetime(2026, 11, 23, tzinfo=UTC)
MILLION = 1_000_000

# provider, model, input, cached input, cache write, output: as published on each price page.
PUBLISHED = [
    ("openai", "gpt-4o", "2.50", "1.25", "2.50", "10.00"),
    ("openai", "gpt-4o-mini", "0.15", "0.075", "0.15", "0.60"),
    ("openai", "gpt-4.1", "2.00", "0.50", "2.00", "8.00"),
    ("openai", "o3", "2.00", "0.50", "2.00", "8.00"),
    ("openai", "gpt-5", "1.25", "0.125", "1.25", "10.00"),
    ("anthropic", "claude-sonnet-4-5", "3", "0.30", "3.75", "15"),
    ("anthropic", "claude-opus-4-1", "15", "1.50", "18.75", "75"),
    ("anthropic", "claude-haiku-4-5", "1", "0.10", "1.25", "5"),
    ("anthropic", "claude-3-5-haiku", "0.80", "0.08", "1", "4"),
    ("google", "gemini-2.5-pro", "1.25", "0.31", "1.25", "10.00"),
    ("google", "gemini-2.5-flash", "0.30", "0.075", "0.30", "2.50"),
    ("deepseek", "deepseek-chat", "0.30", "0.006", "0.30", "1.20"),
    ("mistral", "mistral-large-2411", "2", "2", "2", "6"),
    ("xai", "grok-4-0709", "3.00", "0.75", "3.00", "15.00"),
    ("xai", "grok-3-mini", "0.30", "0.075", "0.30", "0.50"),
    ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "0.88", "0.88", "0.88", "0.88"),
]


@pytest.mark.parametrize(
    ("provider", "model", "input_", "cached", "cache_write", "output"), PUBLISHED
)
def test_each_token_class_costs_the_published_price(
    provider: str, model: str, input_: str, cached: str, cache_write: str, output: str
) -> None:
    # 100k tokens of one class at a time: under every long-context threshold.
    tokens = 100_000
    by_class = {
        "input": (TokenUsage(input_tokens=tokens, output_tokens=0), input_),
        "cached_input": (
            TokenUsage(input_tokens=0, output_tokens=0, cached_input_tokens=tokens),
            cached,
        ),
        "cache_write": (
            TokenUsage(input_tokens=0, output_tokens=0, cache_write_tokens=tokens),
            cache_write,
        ),
        "output": (TokenUsage(input_tokens=0, output_tokens=tokens), output),
    }
    for token_class, (usage, published) in by_class.items():
        cost = get_catalog().price_call(provider, model, usage, NOW)
        assert cost.usd * (MILLION // tokens) == Decimal(published), token_class
        assert Decimal(cost.prices[token_class]) == Decimal(published)


def test_the_catalog_covers_the_major_providers() -> None:
    catalog = get_catalog()
    providers = {resolved.provider_id for resolved in catalog.models()}
    assert providers >= {"openai", "anthropic", "google", "mistral", "deepseek", "xai", "together"}
    assert sum(1 for _ in catalog.models()) >= 30


def test_every_entry_records_its_source_and_when_it_was_checked() -> None:
    for resolved in get_catalog().models():
        assert resolved.model.source.startswith("https://")
        assert resolved.model.checked.year >= 2025
