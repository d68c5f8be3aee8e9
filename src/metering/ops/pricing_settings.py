"""The settings pricing reads: the catalog files, the markup and the platform fee.

`metering.ops.settings.Settings` has these fields through `PricingSettings`, so each is declared
and validated in one place. `read_pricing_settings` reads them from the same sources as `Settings`
without pydantic-settings, whose import alone costs a command like `metering price` a tenth of
its start.
"""

import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

ENV_FILE = ".env"
"""Read from the working directory; the environment wins over it."""


class PricingSettings(BaseModel):
    """What pricing a call needs from the settings (environment variables of the same names)."""

    metering_price_catalog: Path | None = None
    metering_markup: Decimal = Field(default=Decimal(1), gt=0, le=100)
    """Multiplier on catalog prices for `apiKeyMode = system`."""
    metering_platform_fee_usd_per_million: Decimal = Field(default=Decimal(0), ge=0)
    """USD per million tokens charged for `apiKeyMode = own`."""

    @field_validator("metering_markup", "metering_platform_fee_usd_per_million", mode="before")
    @classmethod
    def _no_float(cls, value: object) -> object:
        if isinstance(value, float):
            raise ValueError("give money as a string or integer, not a float")
        return value


def read_pricing_settings(environ: Mapping[str, str] = os.environ) -> PricingSettings:
    """`PricingSettings` from `environ` over `ENV_FILE`, names case-insensitive, as `Settings`
    reads them; a bad value raises pydantic's `ValidationError` naming the variable."""
    values: dict[str, str] = {}
    if Path(ENV_FILE).is_file():
        from dotenv import dotenv_values

        values.update(_lower(dotenv_values(ENV_FILE)))
    values.update(_lower(environ))
    return PricingSettings.model_validate(
        {name: values[name] for name in PricingSettings.model_fields if name in values}
    )


def _lower(variables: Mapping[str, str | None]) -> dict[str, str]:
    return {name.lower(): value for name, value in variables.items() if value is not None}
