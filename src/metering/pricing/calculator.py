"""Pure pricing: rates and token usage to an exact USD cost, and exact cost to exact credits.

All arithmetic runs in a decimal context that raises on any rounding, so a cost is exact or the
call fails; the only rounding is `money.usd_to_exact_credits` (up, at the 18th decimal place).
`AppliedRates` keeps one set of rates, with their price strings, for pricing many calls.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, localcontext

from metering.pricing.errors import UnknownApiKeyMode
from metering.pricing.money import usd_to_exact_credits
from metering.pricing.usage import TokenUsage

API_KEY_MODES: tuple[str, ...] = ("system", "own")
EXACT = Context(prec=80, traps=[Inexact, InvalidOperation, Overflow])
"""Wide enough for any realistic call; a cost that would need rounding raises instead."""


@dataclass(frozen=True, slots=True)
class CallCost:
    """The exact price of one call and everything needed to recompute it.

    `usd` is exact; `prices` maps each token class to the USD per million applied (after the
    long-context and tier rules), as decimal strings.
    """

    provider: str
    model: str
    tier: str
    usage: TokenUsage
    usd: Decimal
    prices: dict[str, str]
    long_context: bool
    effective_from: datetime
    catalog_version: str

    def audit(self) -> dict[str, object]:
        """A JSON-ready record of the cost: what a ledger row's metadata keeps."""
        return {
            "provider": self.provider,
            "model": self.model,
            "tier": self.tier,
            "usd": str(self.usd),
            "prices": dict(self.prices),
            "long_context": self.long_context,
            "effective_from": self.effective_from.isoformat(),
            "catalog_version": self.catalog_version,
        }


def applied_rates(
    rates: Mapping[str, Decimal], multipliers: Mapping[str, Decimal]
) -> dict[str, Decimal]:
    """Each class's rate times its tier multiplier, exactly."""
    with localcontext(EXACT):
        return {token_class: rate * multipliers[token_class] for token_class, rate in rates.items()}


def cost_usd(rates: Mapping[str, Decimal], usage: TokenUsage) -> Decimal:
    """Exact USD of `usage` at `rates` (USD per million per class).

    Reasoning tokens are the part of the output priced at the `reasoning` rate; the rest of the
    output is priced at the `output` rate.
    """
    with localcontext(EXACT):
        micro_usd = (
            usage.input_tokens * rates["input"]
            + usage.cached_input_tokens * rates["cached_input"]
            + usage.cache_write_tokens * rates["cache_write"]
            + (usage.output_tokens - usage.reasoning_tokens) * rates["output"]
            + usage.reasoning_tokens * rates["reasoning"]
        )
        return micro_usd.scaleb(-6)


@dataclass(frozen=True, slots=True)
class AppliedRates:
    """One set of rates after the long-context and tier rules, ready to price many calls.

    `rates` are USD per million per class and `prices` their decimal strings.
    """

    rates: dict[str, Decimal]
    prices: dict[str, str]

    @classmethod
    def of(cls, rates: Mapping[str, Decimal], multipliers: Mapping[str, Decimal]) -> "AppliedRates":
        """`rates` times the tier's `multipliers`, exactly as `applied_rates` gives them."""
        applied = applied_rates(rates, multipliers)
        return cls(applied, {token_class: str(rate) for token_class, rate in applied.items()})

    def usd(self, usage: TokenUsage) -> Decimal:
        """The exact USD of `usage` at these rates (`cost_usd`)."""
        return cost_usd(self.rates, usage)


def charge_exact_credits(
    cost: CallCost,
    api_key_mode: str,
    markup: Decimal,
    platform_fee_usd_per_million: Decimal,
) -> Decimal:
    """Exact (fractional) credits to charge for one priced call.

    `system`: the catalog cost times `markup`. `own` (the user's key): the platform fee (USD per
    million) times every token of the call. Any other mode raises `UnknownApiKeyMode`.
    """
    if markup <= 0 or platform_fee_usd_per_million < 0:
        raise ValueError("markup must be > 0 and the platform fee >= 0")
    if api_key_mode == "system":
        usd = EXACT.multiply(cost.usd, markup)
    elif api_key_mode == "own":
        micro_usd = EXACT.multiply(platform_fee_usd_per_million, cost.usage.total_tokens)
        usd = micro_usd.scaleb(-6, EXACT)
    else:
        raise UnknownApiKeyMode(
            f"apiKeyMode {api_key_mode!r} is not one of {', '.join(API_KEY_MODES)}"
        )
    return usd_to_exact_credits(usd)
