"""The shipped catalog priced side by side with genai-prices on a grid of calls.

Every model of ours that genai-prices also prices (found by our id under the same provider) is
priced by both for each token mix at each date, at the standard tier, and at each service tier
either side knows on the latest date (genai-prices dates its tier prices from October 2026 and
prices a tier it does not know at its standard price). An outcome is a USD amount or, for us,
a refusal of the tier.
"""

import fnmatch
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices

from metering.pricing import Catalog, NoPriceAt, TokenUsage, UnsupportedTier
from metering.pricing.peer_import import PROVIDERS
from metering.pricing.schema import WEEKDAYS

EXCEPTIONS = Path(__file__).with_name("peer_exceptions.toml")
PEER_PROVIDER = {ours: theirs for theirs, (ours, _) in PROVIDERS.items()}
MIXES = {
    "plain": TokenUsage(input_tokens=1_000, output_tokens=500),
    "cached": TokenUsage(input_tokens=1_000, output_tokens=500, cached_input_tokens=4_000),
    "cache-write": TokenUsage(input_tokens=1_000, output_tokens=200, cache_write_tokens=3_000),
    "prompt-200k": TokenUsage(input_tokens=200_000, output_tokens=1_000),
    "long": TokenUsage(input_tokens=300_000, output_tokens=1_000, cached_input_tokens=20_000),
}
"""Token mixes: short calls, cache reads and writes, a prompt of exactly 200,000 tokens (an edge
of most long-context tiers) and a long one above every threshold in the catalog."""
LATEST = datetime(2026, 12, 2, 12, tzinfo=UTC)  # a Wednesday
DATES = (
    datetime(2024, 11, 15, 12, tzinfo=UTC),
    datetime(2025, 6, 2, 12, tzinfo=UTC),
    datetime(2026, 1, 14, 12, tzinfo=UTC),
    LATEST,
)
HOURS = (
    datetime(2025, 3, 5, 0, tzinfo=UTC),
    datetime(2025, 3, 5, 20, tzinfo=UTC),
    datetime(2026, 12, 2, 2, tzinfo=UTC),
    datetime(2026, 12, 2, 10, tzinfo=UTC),
    datetime(2026, 12, 5, 2, tzinfo=UTC),  # a Saturday, at a weekday peak hour
)
"""Times of day where DeepSeek's windows open or close, priced for DeepSeek models only."""
TIER_CONTEXT = {
    "batch": {"processing": "batch"},
    "flex": {"service_tier": "flex"},
    "priority": {"service_tier": "priority"},
}


@dataclass(frozen=True, slots=True)
class Case:
    provider: str
    model: str
    tier: str
    mix: str
    at: datetime
    ours: Decimal | str
    """USD, or `refused` when the catalog does not price the tier."""
    theirs: Decimal


@dataclass(frozen=True, slots=True)
class Exception_:
    """A reviewed disagreement: the cases it covers, and why we keep our price."""

    provider: str
    models: tuple[str, ...]
    """Model ids or shell-style patterns."""
    tier: str
    mixes: tuple[str, ...]
    from_: datetime | None
    until: datetime | None
    days: tuple[str, ...] | None
    """UTC weekdays (`mon`...`sun`) of the call, when the disagreement depends on the day."""
    reason: str

    def covers(self, case: Case) -> bool:
        return (
            case.provider == self.provider
            and any(fnmatch.fnmatchcase(case.model, model) for model in self.models)
            and fnmatch.fnmatchcase(case.tier, self.tier)
            and any(fnmatch.fnmatchcase(case.mix, mix) for mix in self.mixes)
            and (self.from_ is None or case.at >= self.from_)
            and (self.until is None or case.at < self.until)
            and (self.days is None or WEEKDAYS[case.at.weekday()] in self.days)
        )


def peer_usd(provider: str, model: str, usage: TokenUsage, at: datetime, tier: str) -> Decimal:
    """genai-prices' price of one call; `LookupError` when it does not know the model."""
    peer_usage = genai_prices.Usage(
        input_tokens=usage.prompt_tokens,
        cache_read_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
    )
    return genai_prices.calc_price(
        peer_usage,
        model,
        provider_id=PEER_PROVIDER[provider],
        genai_request_timestamp=at,
        price_context=TIER_CONTEXT.get(tier),
    ).total_price


def cases(catalog: Catalog) -> Iterator[Case]:
    """Every comparable case; a model genai-prices does not know under any of its names, or a time
    before our first price, is no case."""
    for resolved in catalog.models():
        provider, model = resolved.provider_id, resolved.model.id
        if provider not in PEER_PROVIDER:
            continue
        reference = _peer_name(provider, (model, *resolved.model.aliases))
        if reference is None:
            continue
        dates = (*DATES, *HOURS) if provider == "deepseek" else DATES
        tiers = sorted(set(resolved.tiers()) | set(TIER_CONTEXT))
        for tier in tiers:
            for at in dates if tier == "standard" else (LATEST,):
                for mix, usage in MIXES.items():
                    case = _case(catalog, provider, model, reference, tier, mix, usage, at)
                    if case is not None:
                        yield case


def _peer_name(provider: str, names: tuple[str, ...]) -> str | None:
    """The first of a model's names genai-prices knows (Fireworks knows only its long names)."""
    for name in names:
        try:
            peer_usd(provider, name, MIXES["plain"], LATEST, "standard")
        except LookupError:
            continue
        return name
    return None


def _case(
    catalog: Catalog,
    provider: str,
    model: str,
    reference: str,
    tier: str,
    mix: str,
    usage: TokenUsage,
    at: datetime,
) -> Case | None:
    theirs = peer_usd(provider, reference, usage, at, tier)
    try:
        ours: Decimal | str = catalog.price_call(provider, model, usage, at, tier).usd
    except NoPriceAt:
        return None
    except UnsupportedTier:
        standard = peer_usd(provider, reference, usage, at, "standard")
        if theirs == standard:
            return None  # neither prices the tier: genai-prices fell back to its standard price
        ours = "refused"
    return Case(provider, model, tier, mix, at, ours, theirs)


def agree(case: Case) -> bool:
    return case.ours == case.theirs


def load_exceptions(path: Path = EXCEPTIONS) -> list[Exception_]:
    document: dict[str, Any] = tomllib.loads(path.read_text())
    return [
        Exception_(
            provider=entry["provider"],
            models=tuple(entry["models"]),
            tier=entry.get("tier", "*"),
            mixes=tuple(entry.get("mixes", ["*"])),
            from_=entry.get("from"),
            until=entry.get("until"),
            days=tuple(entry["days"]) if "days" in entry else None,
            reason=entry["reason"],
        )
        for entry in document["exception"]
    ]
