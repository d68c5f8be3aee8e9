"""The price catalog: loading and validating the TOML file, resolving names, pricing calls.

A `Catalog` is immutable once loaded. `get_catalog` caches one per path; the packaged file is
used when no path is given. A catalog keeps, per model and tier, what pricing a call needs, so
that names are resolved and rates applied once, not per call.
"""

import difflib
import hashlib
import tomllib
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from metering.pricing.calculator import AppliedRates, CallCost
from metering.pricing.errors import (
    CatalogError,
    InvalidUsage,
    NoPriceAt,
    UnknownModel,
    UnknownProvider,
    UnsupportedTier,
)
from metering.pricing.schema import (
    STANDARD_TIER,
    CatalogFile,
    ModelEntry,
    PricePeriod,
    ProviderEntry,
)
from metering.pricing.usage import TokenUsage

PACKAGED_CATALOG = "catalog.toml"
MAX_SPELLINGS = 4096
"""Spellings of (provider, model, tier) remembered per catalog; beyond them, the memory starts
afresh, so that endless distinct names cannot grow it."""


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model found under any of its spellings, with its canonical provider id."""

    provider_id: str
    provider: ProviderEntry
    model: ModelEntry

    def tiers(self) -> dict[str, Decimal]:
        """Service tier -> multiplier, the standard tier included."""
        own = self.provider.tiers if self.model.tiers is None else self.model.tiers
        return {STANDARD_TIER: Decimal(1), **own}

    def period_at(self, at: datetime) -> PricePeriod:
        """The price in force at `at`: the last period starting at or before it."""
        starts = [period.from_ for period in self.model.prices]
        return self.model.prices[_period_index(self, starts, at)]


@dataclass(frozen=True, slots=True)
class TierPrices:
    """A model's prices at one service tier: what pricing its calls needs, resolved once.

    `applied` fills up with the rates of each (period index, long context) as calls use them.
    """

    resolved: ResolvedModel
    multiplier: Decimal
    starts: tuple[datetime, ...]
    applied: dict[tuple[int, bool], AppliedRates] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def of(cls, resolved: ResolvedModel, multiplier: Decimal) -> "TierPrices":
        return cls(resolved, multiplier, tuple(period.from_ for period in resolved.model.prices))

    def rates(self, index: int, long_context: bool) -> AppliedRates:
        """The rates of period `index`, its long-context ones when `long_context`, tier applied."""
        found = self.applied.get((index, long_context))
        if found is None:
            period = self.resolved.model.prices[index]
            base = period.long_context if long_context and period.long_context else period
            found = AppliedRates.of(base.per_class(), self.multiplier)
            self.applied[index, long_context] = found
        return found


class Catalog:
    """Every provider's prices. `version` identifies the file's contents (date and hash)."""

    def __init__(self, data: CatalogFile, version: str, path: Path | None) -> None:
        self.data = data
        self.version = version
        self.path = path
        self._providers: dict[str, str] = {}
        self._models: dict[str, dict[str, ModelEntry]] = {}
        for provider_id, provider in data.providers.items():
            for name in (provider_id, *provider.aliases):
                self._providers[name.lower()] = provider_id
            self._models[provider_id] = {
                name.lower(): model
                for model in provider.models
                for name in (model.id, *model.aliases)
            }
        self._by_tier: dict[tuple[str, str, str], TierPrices] = {}
        self._spellings: dict[tuple[str, str, str], TierPrices] = {}

    def models(self, provider: str | None = None) -> Iterator[ResolvedModel]:
        """Every model, or one provider's, in file order."""
        ids = self.data.providers if provider is None else [self.resolve_provider(provider)]
        for provider_id in ids:
            entry = self.data.providers[provider_id]
            for model in entry.models:
                yield ResolvedModel(provider_id, entry, model)

    def resolve_provider(self, provider: str) -> str:
        """The canonical provider id for any of its spellings; `UnknownProvider` otherwise."""
        found = self._providers.get(provider.strip().lower())
        if found is None:
            raise UnknownProvider(
                f"unknown provider {provider!r}"
                + _suggest(provider.lower(), sorted(self.data.providers))
            )
        return found

    def resolve(self, provider: str, model: str) -> ResolvedModel:
        """Find a model by id, alias, or `provider/model` spelling; `UnknownModel` otherwise."""
        provider_id = self.resolve_provider(provider)
        entry = self.data.providers[provider_id]
        names = self._models[provider_id]
        key = model.strip().lower()
        found = names.get(key)
        if found is None and "/" in key:
            prefix, rest = key.split("/", 1)
            if self._providers.get(prefix) == provider_id:
                found = names.get(rest)
        if found is None:
            canonical = sorted(m.id for m in entry.models)
            matches = difflib.get_close_matches(key, list(names), n=3, cutoff=0.5)
            closest = list(dict.fromkeys(names[name].id for name in matches)) or canonical[:3]
            raise UnknownModel(
                f"unknown model {model!r} for provider {provider_id!r}; "
                f"closest known: {', '.join(closest)}"
            )
        return ResolvedModel(provider_id, entry, found)

    def price_call(
        self,
        provider: str,
        model: str,
        usage: TokenUsage,
        occurred_at: datetime,
        tier: str = STANDARD_TIER,
    ) -> CallCost:
        """The exact cost of one call at the price in force at `occurred_at`.

        A long-context tier applies, to every token class, when the whole prompt (input, cache
        reads and cache writes) exceeds its threshold; the service tier's multiplier applies to
        every rate.
        """
        at_tier = self._spellings.get((provider, model, tier)) or self._resolve_tier(
            provider, model, tier
        )
        resolved = at_tier.resolved
        index = _period_index(resolved, at_tier.starts, occurred_at)
        period = resolved.model.prices[index]
        long_context = (
            period.long_context is not None
            and usage.prompt_tokens > period.long_context.above_prompt_tokens
        )
        rates = at_tier.rates(index, long_context)
        return CallCost(  # positional: a frozen dataclass takes keywords more slowly
            resolved.provider_id,
            resolved.model.id,
            tier,
            usage,
            rates.usd(usage),
            dict(rates.prices),
            long_context,
            period.from_,
            self.version,
        )

    def _resolve_tier(self, provider: str, model: str, tier: str) -> TierPrices:
        """A model's prices at a service tier, by any spelling, remembered for that spelling.

        Raises as `resolve` does, and `UnsupportedTier` when the model does not price the tier.
        """
        resolved = self.resolve(provider, model)
        tiers = resolved.tiers()
        if tier not in tiers:
            raise UnsupportedTier(
                f"{resolved.provider_id}/{resolved.model.id} has no {tier!r} tier; "
                f"priced tiers: {', '.join(tiers)}"
            )
        key = (resolved.provider_id, resolved.model.id, tier)
        at_tier = self._by_tier.get(key)
        if at_tier is None:
            at_tier = self._by_tier[key] = TierPrices.of(resolved, tiers[tier])
        if len(self._spellings) >= MAX_SPELLINGS:
            self._spellings.clear()
        self._spellings[provider, model, tier] = at_tier
        return at_tier


def _period_index(resolved: ResolvedModel, starts: Sequence[datetime], at: datetime) -> int:
    """Index of the model's price in force at `at`, given the (increasing) starts of its prices."""
    try:
        index = bisect_right(starts, at) - 1
    except TypeError:  # a naive time does not compare with the (aware) starts
        if at.tzinfo is None or at.utcoffset() is None:
            raise InvalidUsage(f"{at.isoformat()} has no UTC offset; give an aware time") from None
        raise
    if index < 0:
        first = starts[0].isoformat()
        raise NoPriceAt(
            f"{resolved.provider_id}/{resolved.model.id} has no price at {at.isoformat()}; "
            f"its first price starts {first}"
        )
    return index


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and validate a catalog file (the packaged one when `path` is None).

    Raises `CatalogError` naming the file, the entry and the reason when anything is wrong.
    """
    label = str(path) if path is not None else f"metering/pricing/{PACKAGED_CATALOG}"
    try:
        raw = (
            path.read_bytes()
            if path is not None
            else resources.files("metering.pricing").joinpath(PACKAGED_CATALOG).read_bytes()
        )
    except OSError as error:
        raise CatalogError(f"{label}: cannot read the price catalog: {error}") from error
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise CatalogError(f"{label}: not valid TOML: {error}") from error
    try:
        data = CatalogFile.model_validate(document)
    except ValidationError as error:
        raise CatalogError(_describe(label, document, error)) from error
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return Catalog(data, f"{data.updated.isoformat()}+{digest}", path)


def get_catalog(path: Path | None = None) -> Catalog:
    """The catalog at `path` (the packaged one when None), loaded once per path."""
    return _cached_catalog(path)


@lru_cache(maxsize=8)
def _cached_catalog(path: Path | None) -> Catalog:
    return load_catalog(path)


def _suggest(name: str, known: list[str]) -> str:
    matches = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    return f"; closest known: {', '.join(matches or known)}"


def _describe(label: str, document: dict[str, Any], error: ValidationError) -> str:
    """One line per problem: the entry (with its model id when there is one), field and reason."""
    lines = [f"{label}: invalid price catalog"]
    for problem in error.errors():
        location = [str(part) for part in problem["loc"]]
        entry = _entry_name(document, problem["loc"])
        field = ".".join(location)
        lines.append(f"  entry {entry}, field {field}: {problem['msg']}")
    return "\n".join(lines)


def _entry_name(document: dict[str, Any], loc: tuple[int | str, ...]) -> str:
    if len(loc) >= 4 and loc[0] == "providers" and loc[2] == "models":
        try:
            model = document["providers"][loc[1]]["models"][loc[3]]
        except (KeyError, IndexError, TypeError):
            return f"providers.{loc[1]}"
        model_id = model.get("id", "?") if isinstance(model, dict) else "?"
        return f"providers.{loc[1]}.models[{loc[3]}] ({model_id})"
    if len(loc) >= 2 and loc[0] == "providers":
        return f"providers.{loc[1]}"
    return "(top level)"
