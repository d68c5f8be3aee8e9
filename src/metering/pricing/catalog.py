"""The price catalog: loading and validating layers of catalog files, resolving names, pricing.

The shipped catalog is two packaged layers: `catalog-imported.json` (entries converted from a peer
price list and reviewed) under `catalog.toml` (entries kept by hand, which win). Operators' files
(`METERING_PRICE_CATALOG`, several joined by `os.pathsep`) are laid over it: a model with the id of
a shipped one replaces it, any other is added.

Cost of loading: hand-kept and operators' files are parsed and fully validated at load, so a bad
file fails at start, naming the file, line and field. The imported layer is JSON (parsed in C)
and each of its models is validated the first time it is used; the test suite validates every one.

A `Catalog` is immutable once loaded. `get_catalog` caches one per setting. A catalog keeps, per
model and tier, what pricing a call needs, so that names are resolved and rates applied once.
"""

import difflib
import hashlib
import json
import os
import re
import tomllib
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

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
    TOKEN_CLASSES,
    CatalogFile,
    ModelEntry,
    OverlayFile,
    PricePeriod,
    Tier,
    TierTable,
    tier_multipliers,
)
from metering.pricing.usage import TokenUsage
from metering.usage.event import STANDARD_TIER

PACKAGED_CATALOG = "catalog.toml"
PACKAGED_IMPORTED = "catalog-imported.json"
MAX_SPELLINGS = 4096
"""Spellings of (provider, model, tier) remembered per catalog; beyond them, the memory starts
afresh, so that endless distinct names cannot grow it."""
_STANDARD = dict.fromkeys(TOKEN_CLASSES, Decimal(1))


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """A provider's display name, other spellings and default tiers."""

    name: str
    aliases: tuple[str, ...]
    tiers: Mapping[str, Decimal | TierTable]


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model found under any of its spellings, with its canonical provider id."""

    provider_id: str
    provider: ProviderInfo
    model: ModelEntry

    def tiers(self) -> dict[str, dict[str, Decimal]]:
        """Service tier -> multiplier per token class, the standard tier included."""
        own = self.provider.tiers if self.model.tiers is None else self.model.tiers
        return {
            STANDARD_TIER: dict(_STANDARD),
            **{name: tier_multipliers(tier) for name, tier in own.items()},
        }

    def period_at(self, at: datetime) -> PricePeriod:
        """The price in force at `at`: the last period starting at or before it."""
        starts = [period.from_ for period in self.model.prices]
        return self.model.prices[_period_index(self, starts, at)]


@dataclass(frozen=True, slots=True)
class TierPrices:
    """A model's prices at one service tier: what pricing its calls needs, resolved once.

    `applied` fills up with the rates of each (period index, long context, time window) as calls
    use them.
    """

    resolved: ResolvedModel
    multipliers: dict[str, Decimal]
    starts: tuple[datetime, ...]
    applied: dict[tuple[int, bool, int | None], AppliedRates] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def of(cls, resolved: ResolvedModel, multipliers: dict[str, Decimal]) -> "TierPrices":
        return cls(resolved, multipliers, tuple(period.from_ for period in resolved.model.prices))

    def rates(self, index: int, long_context: bool, window: int | None) -> AppliedRates:
        """Period `index`'s rates (or its long-context or window rates), tier applied."""
        key = (index, long_context, window)
        found = self.applied.get(key)
        if found is None:
            period = self.resolved.model.prices[index]
            if long_context and period.long_context is not None:
                base = period.long_context.per_class()
            elif window is not None:
                base = period.time_of_day[window].per_class()
            else:
                base = period.per_class()
            found = self.applied[key] = AppliedRates.of(base, self.multipliers)
        return found


@dataclass(slots=True)
class _Slot:
    """One model of the catalog: validated, or raw until first used (imported layer only)."""

    label: str
    raw: dict[str, Any] | None
    entry: ModelEntry | None

    def model(self) -> ModelEntry:
        if self.entry is None:
            try:
                self.entry = ModelEntry.model_validate(self.raw)
            except ValidationError as error:
                raise CatalogError(
                    f"{self.label}: invalid model {_raw_id(self.raw)!r}: {error}"
                ) from error
            self.raw = None
        return self.entry


@dataclass(slots=True)
class _Provider:
    info: ProviderInfo
    slots: dict[str, _Slot]
    """Canonical model id (lower case) -> model, in file order."""
    names: dict[str, str]
    """Every spelling (lower case) -> canonical model id (lower case)."""


@dataclass(frozen=True, slots=True)
class Layer:
    """One catalog file's bytes and where they come from."""

    label: str
    raw: bytes
    kind: str
    """`shipped` (a whole catalog, TOML), `imported` (a whole catalog, JSON) or `overlay`."""


class Catalog:
    """Every provider's prices. `version` identifies the contents of every layer (date and hash)."""

    def __init__(self, layers: Sequence[Layer], path: Path | None = None) -> None:
        self.path = path
        self.layers = tuple(layer.label for layer in layers)
        self._table: dict[str, _Provider] = {}
        self._providers: dict[str, str] = {}
        updated: list[date] = []
        digest = hashlib.sha256()
        for layer in layers:
            digest.update(layer.raw)
            when = self._add(layer)
            if when is not None:
                updated.append(when)
        if not self._table:
            raise CatalogError(f"{', '.join(self.layers)}: the price catalog has no provider")
        self.updated = max(updated)
        self.version = f"{self.updated.isoformat()}+{digest.hexdigest()[:12]}"
        self._by_tier: dict[tuple[str, str, str], TierPrices] = {}
        self._spellings: dict[tuple[str, str, str], TierPrices] = {}

    def _add(self, layer: Layer) -> date | None:
        """Lay one file over what is loaded so far; returns its `updated` date."""
        if layer.kind == "imported":
            return self._add_imported(layer)
        text = _decode(layer)
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise CatalogError(f"{layer.label}: not valid TOML: {error}") from error
        shape = CatalogFile if layer.kind == "shipped" else OverlayFile
        try:
            data = shape.model_validate(document)
        except ValidationError as error:
            raise CatalogError(_describe(layer.label, document, error, text)) from error
        for provider_id, provider in data.providers.items():
            slots = [_Slot(layer.label, None, model) for model in provider.models]
            self._merge(
                layer.label, provider_id, provider.name, provider.aliases, provider.tiers, slots
            )
        return data.updated

    def _add_imported(self, layer: Layer) -> date:
        try:
            document = json.loads(layer.raw)
            updated = date.fromisoformat(document["updated"])
            for provider_id, provider in document["providers"].items():
                tiers = _tiers_adapter().validate_python(provider.get("tiers", {}))
                slots = [_Slot(layer.label, model, None) for model in provider["models"]]
                self._merge(
                    layer.label,
                    provider_id,
                    provider["name"],
                    tuple(provider.get("aliases", ())),
                    tiers,
                    slots,
                )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CatalogError(f"{layer.label}: invalid imported price catalog: {error}") from error
        return updated

    def _merge(
        self,
        label: str,
        provider_id: str,
        name: str | None,
        aliases: tuple[str, ...],
        tiers: Mapping[str, Decimal | TierTable] | None,
        slots: list[_Slot],
    ) -> None:
        """Add one provider's models from a layer: same id replaces, new id adds."""
        provider = self._table.get(provider_id)
        if provider is None:
            if name is None:
                raise CatalogError(
                    f"{label}: providers.{provider_id}: a provider the catalog does not ship "
                    "needs a name"
                )
            provider = self._table[provider_id] = _Provider(
                ProviderInfo(name, (), {} if tiers is None else dict(tiers)), {}, {}
            )
        else:
            info = provider.info
            provider.info = ProviderInfo(
                info.name if name is None else name,
                info.aliases,
                info.tiers if tiers is None else dict(tiers),
            )
        provider.info = ProviderInfo(
            provider.info.name, (*provider.info.aliases, *aliases), provider.info.tiers
        )
        for spelling in (provider_id, *aliases):
            owner = self._providers.setdefault(spelling.lower(), provider_id)
            if owner != provider_id:
                raise CatalogError(
                    f"{label}: providers.{provider_id}: {spelling!r} already names provider "
                    f"{owner!r}"
                )
        for slot in slots:
            model_id, model_aliases = _names_of(slot)
            key = model_id.lower()
            if key in provider.slots:
                for spelling, owner in list(provider.names.items()):
                    if owner == key:
                        del provider.names[spelling]
            provider.slots[key] = slot
            for spelling in (model_id, *model_aliases):
                owner = provider.names.setdefault(spelling.lower(), key)
                if owner != key:
                    raise CatalogError(
                        f"{label}: providers.{provider_id}: {spelling!r} of model {model_id!r} "
                        f"already names model {provider.slots[owner].model().id!r}"
                    )

    @property
    def provider_ids(self) -> list[str]:
        """Every provider's canonical id, in file order."""
        return list(self._table)

    def provider_name(self, provider_id: str) -> str:
        """A provider's display name."""
        return self._table[provider_id].info.name

    def models(self, provider: str | None = None) -> Iterator[ResolvedModel]:
        """Every model, or one provider's, in file order."""
        ids = list(self._table) if provider is None else [self.resolve_provider(provider)]
        for provider_id in ids:
            entry = self._table[provider_id]
            for slot in entry.slots.values():
                yield ResolvedModel(provider_id, entry.info, slot.model())

    def resolve_provider(self, provider: str) -> str:
        """The canonical provider id for any of its spellings; `UnknownProvider` otherwise."""
        found = self._providers.get(provider.strip().lower())
        if found is None:
            raise UnknownProvider(
                f"unknown provider {provider!r}" + _suggest(provider.lower(), sorted(self._table))
            )
        return found

    def resolve(self, provider: str, model: str) -> ResolvedModel:
        """Find a model by id, alias, or `provider/model` spelling; `UnknownModel` otherwise."""
        provider_id = self.resolve_provider(provider)
        entry = self._table[provider_id]
        names = entry.names
        key = model.strip().lower()
        found = names.get(key)
        if found is None and "/" in key:
            prefix, rest = key.split("/", 1)
            if self._providers.get(prefix) == provider_id:
                found = names.get(rest)
        if found is None:
            matches = difflib.get_close_matches(key, list(names), n=3, cutoff=0.5)
            closest = list(dict.fromkeys(entry.slots[names[name]].model().id for name in matches))
            if not closest:
                closest = sorted(slot.model().id for slot in entry.slots.values())[:3]
            raise UnknownModel(
                f"unknown model {model!r} for provider {provider_id!r}; "
                f"closest known: {', '.join(closest)}"
            )
        return ResolvedModel(provider_id, entry.info, entry.slots[found].model())

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
        reads and cache writes) exceeds its threshold; a time-of-day window applies when it
        contains `occurred_at` (UTC); the service tier's multipliers apply to every rate.
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
        window = period.window_at(occurred_at.astimezone(UTC)) if period.time_of_day else None
        rates = at_tier.rates(index, long_context, window)
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
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidUsage(f"occurred_at {at.isoformat()} has no UTC offset")
    index = bisect_right(starts, at) - 1
    if index < 0:
        first = starts[0].isoformat()
        raise NoPriceAt(
            f"{resolved.provider_id}/{resolved.model.id} has no price at {at.isoformat()}; "
            f"its first price starts {first}"
        )
    return index


def shipped_layers() -> list[Layer]:
    """The packaged catalog: the imported layer, then the hand-kept one over it."""
    package = resources.files("metering.pricing")
    layers = []
    for name, kind in ((PACKAGED_IMPORTED, "imported"), (PACKAGED_CATALOG, "shipped")):
        layers.append(Layer(f"metering/pricing/{name}", package.joinpath(name).read_bytes(), kind))
    return layers


def read_layer(path: Path, kind: str = "overlay") -> Layer:
    """One catalog file from disk; `CatalogError` naming it when it cannot be read."""
    try:
        return Layer(str(path), path.read_bytes(), kind)
    except OSError as error:
        raise CatalogError(f"{path}: cannot read the price catalog: {error}") from error


def load_catalog(path: Path | None = None) -> Catalog:
    """The shipped catalog (when `path` is None), or the catalog file at `path` on its own.

    Raises `CatalogError` naming the file, line, entry and reason when anything is wrong.
    """
    if path is None:
        return Catalog(shipped_layers())
    return Catalog([read_layer(path, "shipped")], path)


def load_with_overlays(paths: Sequence[Path]) -> Catalog:
    """The shipped catalog with each file of `paths` laid over it, in order."""
    overlays = [read_layer(path) for path in paths]
    return Catalog([*shipped_layers(), *overlays], paths[0] if len(paths) == 1 else None)


def overlay_paths(setting: Path | str) -> list[Path]:
    """The files named by `METERING_PRICE_CATALOG`: one path, or several joined by `os.pathsep`."""
    return [Path(part) for part in str(setting).split(os.pathsep) if part.strip()]


def get_catalog(path: Path | None = None) -> Catalog:
    """The shipped catalog with the files of `path` (`METERING_PRICE_CATALOG`) laid over it.

    Loaded once per setting; `None` is the shipped catalog alone.
    """
    return _cached_catalog(path)


@lru_cache(maxsize=1)
def _tiers_adapter() -> TypeAdapter[dict[str, Decimal | TierTable]]:
    """Built on first use: a module-level adapter would cost every import of the package."""
    return TypeAdapter(dict[str, Tier])


@lru_cache(maxsize=8)
def _cached_catalog(path: Path | None) -> Catalog:
    if path is None:
        return load_catalog()
    return load_with_overlays(overlay_paths(path))


def _decode(layer: Layer) -> str:
    try:
        return layer.raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CatalogError(f"{layer.label}: not valid TOML: {error}") from error


def _names_of(slot: _Slot) -> tuple[str, tuple[str, ...]]:
    if slot.entry is not None:
        return slot.entry.id, slot.entry.aliases
    raw = slot.raw if isinstance(slot.raw, dict) else {}
    model_id, aliases = raw.get("id"), raw.get("aliases", [])
    if not isinstance(model_id, str) or not all(isinstance(alias, str) for alias in aliases):
        raise CatalogError(f"{slot.label}: a model has no valid id or aliases: {raw!r:.200}")
    return model_id, tuple(aliases)


def _raw_id(raw: object) -> object:
    return raw.get("id", "?") if isinstance(raw, dict) else "?"


def _suggest(name: str, known: list[str]) -> str:
    matches = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    return f"; closest known: {', '.join(matches or known)}"


def _describe(label: str, document: dict[str, Any], error: ValidationError, text: str) -> str:
    """One line per problem: the line, the entry (with its model id), the field and the reason."""
    lines = [f"{label}: invalid price catalog"]
    problems = [
        (tuple(part for part in problem["loc"] if not _is_union_tag(part)), problem)
        for problem in error.errors()
    ]
    for loc, problem in problems:
        if problem["type"] == "too_short" and any(
            other[: len(loc)] == loc and other != loc for other, _ in problems
        ):
            continue  # a list made short only by its own bad items, already reported
        entry = _entry_name(document, loc)
        line = _line_of(text, loc)
        where = f"line {line}, " if line is not None else ""
        lines.append(f"  {where}entry {entry}, field {'.'.join(map(str, loc))}: {problem['msg']}")
    return "\n".join(lines)


def _is_union_tag(part: int | str) -> bool:
    """Pydantic names the union member it tried (e.g. `TierTable`); not a field of the file."""
    return isinstance(part, str) and (part[:1].isupper() or part.startswith("function-"))


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


def _line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line where the field at `loc` is written, as near as the file lets it tell.

    Follows `[[...]]` headers to the entry (the n-th `[[providers.P.models]]`, then its n-th
    `[[...prices]]`), then looks for the field's key below it; falls back to the entry's header.
    """
    lines = text.splitlines()
    start, found = 0, None
    if len(loc) >= 2 and loc[0] == "providers":
        header = f"[providers.{loc[1]}]"
        start = next((n for n, line in enumerate(lines) if line.strip() == header), 0)
    table: list[str] = []
    for part in loc:
        if isinstance(part, int):
            name = ".".join(table)
            hits = [n for n in range(start, len(lines)) if lines[n].strip() == f"[[{name}]]"]
            if part >= len(hits):
                return found
            start = hits[part]
            found = start + 1
        else:
            table.append(part)
    field = next((part for part in reversed(loc) if isinstance(part, str)), None)
    if field is None:
        return found
    key = re.compile(rf'(^|[{{,]\s*)"?{re.escape(field)}"?\s*=')
    for number in range(start, len(lines)):
        line = lines[number].lstrip()
        if number > start and found is not None and line.startswith("[["):
            break
        if key.search(line):
            return number + 1
    return found
