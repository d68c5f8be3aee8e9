"""The pricing commands as an operator runs them."""

import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

import metering.cli.pricing  # noqa: F401  (registers the commands)
from metering.cli.app import app
from metering.ops.settings import get_settings
from metering.pricing import TokenUsage, charge_exact_credits, get_catalog

runner = CliRunner()


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.delenv("METERING_PRICE_CATALOG", raising=False)
    monkeypatch.setenv("METERING_MARKUP", "1.5")
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def price(*args: str) -> dict[str, object]:
    result = runner.invoke(app, ["price", *args, "--json"])
    assert result.exit_code == 0, result.output
    parsed: dict[str, object] = json.loads(result.output)
    return parsed


def test_price_json_gives_usd_credits_prices_and_version() -> None:
    out = price(
        "--provider", "anthropic", "--model", "claude-sonnet-4-20250514",
        "--input-tokens", "1000", "--output-tokens", "200", "--cached-input-tokens", "5000",
        "--cache-write-tokens", "100", "--at", "2025-09-01T12:00:00Z",
    )  # fmt: skip
    # 1000 * 3 + 5000 * 0.30 + 100 * 3.75 + 200 * 15 = 7875 micro-USD; markup 1.5.
    assert Decimal(str(out["usd"])) == Decimal("0.007875")
    assert out["credits"] == "11.812500000000000000"
    assert out["model"] == "claude-sonnet-4"
    assert out["prices"] == {
        "input": "3",
        "cached_input": "0.30",
        "cache_write": "3.75",
        "output": "15",
        "reasoning": "15",
    }
    assert str(out["catalog_version"]).startswith("2026-")


def test_price_batch_uses_the_batch_tier() -> None:
    args = ["--provider", "openai", "--model", "gpt-4.1", "--input-tokens", "1000000"]
    out = price(*args, "--output-tokens", "0", "--batch")
    assert (out["tier"], Decimal(str(out["usd"]))) == ("batch", Decimal(1))


def test_price_own_key_charges_only_the_platform_fee(
    fresh_settings: pytest.MonkeyPatch,
) -> None:
    fresh_settings.setenv("METERING_PLATFORM_FEE_USD_PER_MILLION", "0.50")
    get_settings.cache_clear()
    out = price(
        "--provider", "openai", "--model", "o3", "--input-tokens", "1500000",
        "--output-tokens", "500000", "--api-key-mode", "own",
    )  # fmt: skip
    assert out["credits"] == "1000.000000000000000000"


def test_price_reports_an_unknown_model_with_suggestions() -> None:
    result = runner.invoke(
        app,
        ["price", "--provider", "openai", "--model", "gpt-4-o", "--input-tokens", "1",
         "--output-tokens", "1"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "unknown_model" in result.output
    assert "gpt-4o" in result.output


def test_price_refuses_a_time_without_offset() -> None:
    result = runner.invoke(
        app,
        ["price", "--provider", "openai", "--model", "o3", "--input-tokens", "1",
         "--output-tokens", "1", "--at", "2025-06-10T00:00:00"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "UTC offset" in result.output


def test_prices_lists_a_provider(fresh_settings: pytest.MonkeyPatch) -> None:
    result = runner.invoke(
        app, ["prices", "--provider", "deepseek", "--at", "2025-03-01T12:00:00Z"]
    )
    assert result.exit_code == 0, result.output
    assert "deepseek-chat" in result.output
    assert "0.27" in result.output
    assert "time of day" not in result.output
    night = runner.invoke(app, ["prices", "--provider", "deepseek", "--at", "2025-03-01T00:00:00Z"])
    assert "0.135" in night.output
    assert "time of day" in night.output
    assert "openai" not in result.output


def test_prices_uses_the_catalog_from_settings(
    fresh_settings: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("updated = 2025-01-01\n")
    fresh_settings.setenv("METERING_PRICE_CATALOG", str(path))
    get_settings.cache_clear()
    result = runner.invoke(app, ["prices"])
    assert result.exit_code == 2
    assert str(path) in result.output.replace("\n", "")
    assert "invalid_catalog" in result.output


@pytest.mark.parametrize(
    ("provider", "model", "tokens", "tier", "mode", "at"),
    [
        ("openai", "gpt-4o-mini", (1000, 500, 2000, 0, 0), "standard", "system", None),
        ("openai", "gpt-4.1", (1_000_000, 10, 0, 0, 0), "batch", "system", None),
        ("openai", "gpt-5.4", (300_000, 900, 5000, 0, 400), "flex", "system", None),
        ("anthropic", "claude-sonnet-4-20250514", (1000, 200, 5000, 100, 0), "standard", "own",
         "2025-09-01T12:00:00Z"),
        ("deepseek", "deepseek-chat", (7, 11, 13, 0, 0), "standard", "system",
         "2025-03-01T00:10:00+00:00"),
    ],
)  # fmt: skip
def test_price_prints_what_the_service_charges(
    fresh_settings: pytest.MonkeyPatch,
    provider: str,
    model: str,
    tokens: tuple[int, int, int, int, int],
    tier: str,
    mode: str,
    at: str | None,
) -> None:
    """Text and JSON give the cost and credits of `Catalog.price_call` and `charge_exact_credits`
    with the service's settings: tiers, cached tokens, cache writes, reasoning, long context, time
    of day and the user's own key."""
    fresh_settings.setenv("METERING_PLATFORM_FEE_USD_PER_MILLION", "0.25")
    get_settings.cache_clear()
    names = ("input", "output", "cached-input", "cache-write", "reasoning")
    moment = "2026-11-30T18:00:00+00:00" if at is None else at
    args = ["--provider", provider, "--model", model, "--tier", tier, "--api-key-mode", mode]
    args += [
        "--at",
        moment,
        *(f"--{n}-tokens={count}" for n, count in zip(names, tokens, strict=True)),
    ]
    settings = get_settings()
    cost = get_catalog(settings.metering_price_catalog).price_call(
        provider, model, TokenUsage(*tokens), datetime.fromisoformat(moment), tier
    )
    credits = charge_exact_credits(
        cost, mode, settings.metering_markup, settings.metering_platform_fee_usd_per_million
    )
    assert price(*args) == {**cost.audit(), "api_key_mode": mode, "credits": str(credits)}
    text = runner.invoke(app, ["price", *args])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[0].endswith(f": ${cost.usd} = {credits} credits ({mode} key)")
    assert lines[0].startswith(f"{cost.provider}/{cost.model} ({tier}")
    assert lines[1:-1] == [
        f"  {name:>12}: ${rate} per 1M tokens" for name, rate in cost.prices.items()
    ]
    assert cost.catalog_version in lines[-1]
