"""Pricing's settings read without pydantic-settings are the service's settings."""

from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from metering.ops.pricing_settings import PricingSettings, read_pricing_settings
from metering.ops.settings import Settings

NAMES = list(PricingSettings.model_fields)


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in NAMES:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def service() -> dict[str, object]:
    settings = Settings()
    return {name: getattr(settings, name) for name in NAMES}


def test_defaults_are_the_services() -> None:
    assert read_pricing_settings().model_dump() == service()
    assert read_pricing_settings() == PricingSettings()


def test_the_environment_and_env_file_are_read_as_the_service_reads_them(
    clean: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "METERING_MARKUP=2.5\n"
        "metering_platform_fee_usd_per_million='0.40'\n"
        "METERING_PRICE_CATALOG=/from/env-file.toml\n"
    )
    clean.setenv("Metering_Price_Catalog", "/etc/metering/prices.toml")
    read = read_pricing_settings()
    assert read.model_dump() == service()
    assert read.metering_markup == Decimal("2.5")
    assert read.metering_platform_fee_usd_per_million == Decimal("0.40")
    assert read.metering_price_catalog == Path("/etc/metering/prices.toml")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("METERING_MARKUP", "0", "greater than 0"),
        ("METERING_MARKUP", "101", "less than or equal to 100"),
        ("METERING_PLATFORM_FEE_USD_PER_MILLION", "-1", "greater than or equal to 0"),
        ("METERING_MARKUP", "lots", "decimal"),
    ],
)
def test_a_bad_value_is_refused_as_the_service_refuses_it(
    clean: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    clean.setenv(name, value)
    with pytest.raises(ValidationError, match=message) as read:
        read_pricing_settings()
    with pytest.raises(ValidationError) as full:
        Settings()
    assert [e["loc"] for e in read.value.errors()] == [e["loc"] for e in full.value.errors()]
    assert read.value.errors()[0]["msg"] == full.value.errors()[0]["msg"]


def test_money_is_never_a_float() -> None:
    with pytest.raises(ValidationError, match="not a float"):
        PricingSettings(metering_markup=1.5)  # type: ignore[arg-type]
