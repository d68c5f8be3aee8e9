"""Budget estimates: expected calls and tokens per model to whole credits (`estimatedCredits`)."""

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal, localcontext

from pydantic import BaseModel, ConfigDict, Field

from metering.pricing.calculator import EXACT, charge_exact_credits
from metering.pricing.catalog import Catalog
from metering.pricing.money import whole_credits
from metering.pricing.schema import STANDARD_TIER
from metering.pricing.usage import TokenUsage


class EstimateItem(BaseModel):
    """`calls` expected calls to one model, each using the given tokens (per call, disjoint)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str
    model: str
    calls: int = Field(ge=0, strict=True)
    input_tokens: int = Field(default=0, ge=0, strict=True)
    output_tokens: int = Field(default=0, ge=0, strict=True)
    cached_input_tokens: int = Field(default=0, ge=0, strict=True)
    cache_write_tokens: int = Field(default=0, ge=0, strict=True)
    reasoning_tokens: int = Field(default=0, ge=0, strict=True)
    tier: str = STANDARD_TIER

    def usage(self) -> TokenUsage:
        """The token usage of one of these calls."""
        return TokenUsage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cached_input_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
        )


def estimate_credits(
    catalog: Catalog,
    items: Iterable[EstimateItem],
    api_key_mode: str,
    markup: Decimal,
    platform_fee_usd_per_million: Decimal,
    at: datetime,
) -> int:
    """Whole credits the expected calls would cost at the prices in force at `at`.

    Each call is priced on its own (so long-context tiers apply per call) and the exact total is
    rounded up once, as the ledger charges an experiment.
    """
    total = Decimal(0)
    for item in items:
        cost = catalog.price_call(item.provider, item.model, item.usage(), at, item.tier)
        exact = charge_exact_credits(cost, api_key_mode, markup, platform_fee_usd_per_million)
        with localcontext(EXACT):
            total += exact * item.calls
    return whole_credits(total)
