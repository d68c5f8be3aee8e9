"""Budget estimates: expected calls and tokens per model to whole credits (`estimatedCredits`)."""

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal, InvalidOperation, Overflow, localcontext

from pydantic import BaseModel, ConfigDict, Field

from metering.pricing.calculator import EXACT, CallCost, charge_exact_credits
from metering.pricing.catalog import Catalog
from metering.pricing.errors import InvalidUsage
from metering.pricing.money import whole_credits
from metering.pricing.usage import TokenUsage
from metering.usage.event import STANDARD_TIER, Name, Tier, TokenCount

MAX_CALLS = 1_000_000_000
"""Calls of one item, and of a whole estimate."""
MAX_CALL_CREDITS = 2**31 - 1
"""The most one usage event can be charged (the ledger's limit, an INTEGER amount)."""


class EstimateItem(BaseModel):
    """`calls` expected calls to one model, each using the given tokens (per call, disjoint).

    Bounds: what one usage event can carry (tokens per class, names, tier), and at most
    `MAX_CALLS` calls, so that pricing an estimate within them cannot overflow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Name
    model: Name
    calls: int = Field(ge=0, le=MAX_CALLS, strict=True)
    input_tokens: TokenCount = 0
    output_tokens: TokenCount = 0
    cached_input_tokens: TokenCount = 0
    cache_write_tokens: TokenCount = 0
    reasoning_tokens: TokenCount = 0
    tier: Tier = STANDARD_TIER

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
    rounded up once, as the ledger charges an experiment. Raises `InvalidUsage` for a call that
    would cost more than one usage event can be charged.
    """
    total = Decimal(0)
    for item in items:
        cost = catalog.price_call(item.provider, item.model, item.usage(), at, item.tier)
        exact = _call_credits(item, cost, api_key_mode, markup, platform_fee_usd_per_million)
        # Each product has at most 28 + 10 digits, and there are at most 1,000: well inside
        # EXACT's 80 digits, so the total is exact.
        with localcontext(EXACT):
            total += exact * item.calls
    return whole_credits(total)


def _call_credits(
    item: EstimateItem,
    cost: CallCost,
    api_key_mode: str,
    markup: Decimal,
    platform_fee_usd_per_million: Decimal,
) -> Decimal:
    """Exact credits of one call, at most `MAX_CALL_CREDITS`.

    A cost beyond the 28 digits of the default decimal context (10^10 credits and more, which
    a large markup, platform fee or catalog price can reach) is refused like any other too large.
    """
    try:
        exact = charge_exact_credits(cost, api_key_mode, markup, platform_fee_usd_per_million)
    except (InvalidOperation, Overflow):
        exact = None
    if exact is None or exact > MAX_CALL_CREDITS:
        raise InvalidUsage(
            f"one call to {item.provider}/{item.model} with these tokens would cost more than "
            f"{MAX_CALL_CREDITS:,} credits, more than one usage event can be charged"
        )
    return exact
