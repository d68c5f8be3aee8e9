"""Catalog entries converted from genai-prices' price data, and how they differ from a catalog.

genai-prices is never imported at run time unless it is installed and no data file is given: the
data is read from its JSON file (a list of providers, as the project publishes it) or from the
installed package's data module, turned into the same plain shape.

What converts: models that are not deprecated and price text input tokens (output at 0 when no
output price is given and nothing else is priced as output: embedding models); one
prompt-length tier per model (`long_context`); dated prices (`StartDateConstraint`) as periods;
daily windows (`TimeOfDateConstraint`) as `time_of_day` windows; the batch, flex and priority
variants as tier multipliers when every class keeps one exact ratio to the standard price. Other
variants are left out, so their tiers stay refused. Nothing is ever written into a catalog: the
result is a file for review.
"""

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from metering.pricing.catalog import Catalog
from metering.pricing.errors import CatalogError, PricingError
from metering.pricing.schema import ModelEntry

PROVIDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "openai": ("openai", ()),
    "anthropic": ("anthropic", ()),
    "google": ("google", ()),
    "x-ai": ("xai", ()),
    "deepseek": ("deepseek", ()),
    "mistral": ("mistral", ()),
    "groq": ("groq", ()),
    "together": ("together", ()),
    "fireworks": ("fireworks", ("fireworks-ai", "fireworks_ai")),
    "aws": ("bedrock", ("aws", "aws-bedrock", "amazon-bedrock")),
}
"""genai-prices provider id -> (catalog provider id, aliases for a provider new to the catalog)."""
FIRST_FROM = "2023-01-01T00:00:00Z"
"""genai-prices gives no release dates: an imported model's first price applies from here."""
CLASSES = {
    "input_mtok": "input",
    "cache_read_mtok": "cached_input",
    "cache_write_mtok": "cache_write",
    "output_mtok": "output",
    "output_reasoning_mtok": "reasoning",
}
"""genai-prices price keys -> catalog token classes; other keys (audio, images, searches) are not
token classes here."""
TIER_VARIANTS = {
    ("processing", "batch"): "batch",
    ("service_tier", "flex"): "flex",
    ("service_tier", "priority"): "priority",
}


@dataclass(frozen=True, slots=True)
class Skipped:
    """A peer model left out, and why."""

    provider: str
    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class Converted:
    """One model as a catalog entry (plain data, in the catalog's shape) for a catalog provider."""

    provider: str
    entry: dict[str, Any]
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Difference:
    """A converted model against the catalog: `new`, `same` or `differs` (with what differs)."""

    converted: Converted
    status: str
    detail: str


@dataclass(frozen=True, slots=True)
class Conversion:
    converted: list[Converted]
    skipped: list[Skipped]


def load_peer_data(path: Path | None) -> list[dict[str, Any]]:
    """genai-prices' providers as plain data: from the JSON file at `path`, else its package.

    Raises `CatalogError` when the file cannot be read or has the wrong shape, or when no file is
    given and genai-prices is not installed.
    """
    if path is not None:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as error:
            raise CatalogError(f"{path}: cannot read genai-prices data: {error}") from error
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise CatalogError(f"{path}: genai-prices data must be a JSON list of providers")
        return data
    try:
        from genai_prices import data as package  # optional, only here
    except ImportError as error:
        raise CatalogError(
            "genai-prices data not found: give its data file (--from data.json, the JSON list "
            "of providers genai-prices publishes) or install the genai-prices package"
        ) from error
    return [_plain(provider) for provider in package.providers]


def _plain(value: Any) -> Any:
    """genai-prices objects as JSON-shaped data (their own field names, `or_` written `or`)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            item.name.rstrip("_"): _plain(getattr(value, item.name))
            for item in dataclasses.fields(value)
            if getattr(value, item.name) is not None and item.name != "extractors"
        }
    if hasattr(value, "__dict__"):  # ModelPrice: price keys as attributes
        return {key: _plain(item) for key, item in vars(value).items() if item is not None}
    return value


def convert(peer: Iterable[Mapping[str, Any]], checked: date) -> Conversion:
    """Every model of the providers in `PROVIDERS` as catalog entries, or why it is left out."""
    converted: list[Converted] = []
    skipped: list[Skipped] = []
    for provider in peer:
        mapping = PROVIDERS.get(str(provider.get("id")))
        if mapping is None:
            continue
        ours = mapping[0]
        urls = provider.get("pricing_urls") or []
        source = next((url for url in urls if str(url).startswith("https://")), None)
        for model in provider.get("models", []):
            model_id = str(model.get("id"))
            try:
                if source is None:
                    raise _Unconvertible("the provider lists no https pricing page")
                entry, notes = _entry(model, source, checked)
            except _Unconvertible as reason:
                skipped.append(Skipped(ours, model_id, str(reason)))
                continue
            converted.append(Converted(ours, entry, notes))
    return Conversion(converted, skipped)


class _Unconvertible(Exception):
    """A model the catalog's format cannot hold as the peer prices it."""


def _entry(
    model: Mapping[str, Any], source: str, checked: date
) -> tuple[dict[str, Any], tuple[str, ...]]:
    if model.get("deprecated"):
        raise _Unconvertible("deprecated")
    prices = model.get("prices")
    conditionals = prices if isinstance(prices, list) else [{"prices": prices}]
    periods: list[dict[str, Any]] = []
    windows: list[dict[str, Any]] = []
    notes: set[str] = set()
    for conditional in conditionals:
        constraint = conditional.get("constraint") or {}
        rates, long_context, extra = _rates(conditional.get("prices") or {})
        notes.update(extra)
        if "start_time" in constraint:
            if long_context:
                raise _Unconvertible("a time-of-day price with prompt-length tiers")
            windows.append({**_window(constraint), **rates})
            continue
        period: dict[str, Any] = {"from": FIRST_FROM, **rates}
        if "start_date" in constraint:
            period["from"] = f"{constraint['start_date']}T00:00:00Z"
        elif constraint:
            raise _Unconvertible(f"an unknown price constraint {sorted(constraint)}")
        if long_context:
            period["long_context"] = long_context
        periods.append(period)
    if windows and len(periods) != 1:
        raise _Unconvertible("time-of-day prices together with dated prices")
    if windows:
        periods[0]["time_of_day"] = windows
    periods.sort(key=_start)
    if len({period["from"] for period in periods}) != len(periods):
        raise _Unconvertible("two prices start on the same day")
    if all(period["from"] > f"{checked.isoformat()}T23:59:59Z" for period in periods):
        raise _Unconvertible("no price in force yet")
    tiers, tier_notes = _tiers(model.get("price_variants") or [], periods, checked)
    entry: dict[str, Any] = {
        "id": str(model["id"]),
        "aliases": _aliases(model.get("match"), str(model["id"])),
        "source": source,
        "checked": checked.isoformat(),
        "tiers": tiers,
        "prices": periods,
    }
    return entry, tuple(sorted(notes | set(tier_notes)))


def _rates(
    prices: Mapping[str, Any],
) -> tuple[dict[str, str], dict[str, Any] | None, list[str]]:
    """A peer price set as catalog rates, its one prompt-length tier, and the keys not kept."""
    if "input_mtok" not in prices:
        raise _Unconvertible("no price for text input tokens")
    extra: list[str] = []
    if "output_mtok" not in prices:
        if any("output" in key for key in prices):
            raise _Unconvertible("output priced in units other than text tokens")
        # An embedding model: it generates no tokens, and the peer charges none for output.
        prices = {**prices, "output_mtok": "0"}
        extra.append("no output price: output tokens cost 0")
    base: dict[str, str] = {}
    long: dict[str, str] = {}
    starts: set[int] = set()
    for key, value in prices.items():
        token_class = CLASSES.get(key)
        if token_class is None:
            continue
        if isinstance(value, Mapping):
            tiers = value.get("tiers") or []
            if len(tiers) != 1:
                raise _Unconvertible(f"{key} has {len(tiers)} prompt-length tiers")
            starts.add(int(tiers[0]["start"]))
            base[token_class] = str(value["base"])
            long[token_class] = str(tiers[0]["price"])
        else:
            base[token_class] = str(value)
    if len(starts) > 1:
        raise _Unconvertible("token classes change price at different prompt lengths")
    extra += sorted(f"{key} not priced" for key in prices if key not in CLASSES)
    if not starts:
        return base, None, extra
    long_context: dict[str, Any] = {"above_prompt_tokens": starts.pop()}
    long_context.update({name: long.get(name, rate) for name, rate in base.items()})
    return base, long_context, extra


def _window(constraint: Mapping[str, Any]) -> dict[str, Any]:
    start, end = (_utc(str(constraint[key])) for key in ("start_time", "end_time"))
    return {"start": start, "end": end}


def _utc(text: str) -> str:
    moment = time.fromisoformat(text)
    if moment.utcoffset():
        raise _Unconvertible(f"a time of day {text} not in UTC")
    return moment.replace(tzinfo=None).isoformat()


def _tiers(
    variants: Iterable[Mapping[str, Any]], periods: list[dict[str, Any]], today: date
) -> tuple[dict[str, Any], list[str]]:
    """The peer's batch / flex / priority variants as tier multipliers on the standard rates.

    As genai-prices does, the first variant of a tier in force `today` applies, compared with the
    standard price in force today. Tiers are not dated in the catalog: a later variant is noted.
    """
    now = f"{today.isoformat()}T23:59:59Z"
    standard = max((period for period in periods if period["from"] <= now), key=_start)
    tiers: dict[str, Any] = {}
    notes: list[str] = []
    for variant in variants:
        when = variant.get("when") or {}
        name = TIER_VARIANTS.get(next(iter(when.items()), ("", ""))) if len(when) == 1 else None
        if name is None or name in tiers:
            continue
        starts = (variant.get("constraint") or {}).get("start_date")
        if starts is not None and date.fromisoformat(str(starts)) > today:
            notes.append(f"{name} prices from {starts} not kept")
            continue
        try:
            tiers[name] = _multipliers(variant.get("prices") or {}, standard)
        except _Unconvertible as reason:
            notes.append(f"{name} tier left out: {reason}")
            tiers[name] = None
    return {name: tier for name, tier in tiers.items() if tier is not None}, notes


def _start(period: Mapping[str, Any]) -> str:
    return str(period["from"])


def _multipliers(prices: Mapping[str, Any], standard: Mapping[str, Any]) -> Any:
    """One multiplier ("0.5") when every class scales alike, else a table with `every`."""
    long = standard.get("long_context") or {}
    ratios: dict[str, Decimal] = {}
    for key, value in prices.items():
        token_class = CLASSES.get(key)
        if token_class is None or token_class not in standard:
            continue
        if isinstance(value, Mapping):
            tier = (value.get("tiers") or [{}])[0]
            pairs = [
                (standard[token_class], value["base"]),
                (long.get(token_class), tier.get("price")),
            ]
        else:
            pairs = [(standard[token_class], value)]
            if token_class in long:
                pairs.append((long[token_class], value))
        found = {_ratio(ours, theirs) for ours, theirs in pairs}
        if len(found) != 1:
            raise _Unconvertible(f"{key} changes by a different ratio above the prompt tier")
        ratios[token_class] = found.pop()
    per_class = {
        name: ratios.get(name, Decimal(1)) for name in CLASSES.values() if name in standard
    }
    common = Counter(per_class.values()).most_common(1)[0][0]
    if len(set(per_class.values())) == 1:
        return _text(common)
    table = {"every": _text(common)}
    table.update({name: _text(ratio) for name, ratio in per_class.items() if ratio != common})
    return table


def _ratio(standard: object, variant: object) -> Decimal:
    try:
        ours, theirs = Decimal(str(standard)), Decimal(str(variant))
        ratio = (theirs / ours).normalize()
    except (InvalidOperation, ArithmeticError) as error:
        raise _Unconvertible(f"no exact ratio between {standard} and {variant}") from error
    if ours * ratio != theirs or len(ratio.as_tuple().digits) > 6:
        raise _Unconvertible(f"no exact ratio between {standard} and {variant}")
    return ratio


def _text(number: Decimal) -> str:
    return format(number.normalize(), "f")


def _aliases(match: object, model_id: str) -> list[str]:
    """The exact names the peer matches (its `equals` clauses, inside `or` too), but the id."""
    found: list[str] = []
    pending = [match]
    while pending:
        clause = pending.pop(0)
        if isinstance(clause, Mapping):
            if isinstance(clause.get("equals"), str):
                found.append(clause["equals"].lower())
            pending.extend(clause.get("or") or [])
    return [name for name in dict.fromkeys(found) if name != model_id.lower()]


def compare(catalog: Catalog, conversion: Conversion) -> list[Difference]:
    """Each converted model against `catalog`: new to it, the same prices, or different ones.

    Aliases the catalog already gives another model are dropped from the converted entry.
    """
    differences: list[Difference] = []
    for item in conversion.converted:
        try:
            resolved = catalog.resolve(item.provider, str(item.entry["id"]))
        except PricingError:
            resolved = None
        if resolved is None:
            item.entry["aliases"] = [
                alias
                for alias in item.entry["aliases"]
                if not _known(catalog, item.provider, alias)
            ]
            differences.append(Difference(item, "new", ""))
            continue
        ours = resolved.model
        # Written as a change, the entry must replace ours: our id, and no name of another model.
        item.entry["id"] = ours.id
        item.entry["aliases"] = [
            alias
            for alias in item.entry["aliases"]
            if alias != ours.id.lower() and _owner(catalog, item.provider, alias) in (None, ours.id)
        ]
        theirs = ModelEntry.model_validate(item.entry)
        detail = _differs(ours, theirs, resolved.tiers(), item.entry["tiers"])
        differences.append(Difference(item, "differs" if detail else "same", detail))
    return differences


def _known(catalog: Catalog, provider: str, name: str) -> bool:
    return _owner(catalog, provider, name) is not None


def _owner(catalog: Catalog, provider: str, name: str) -> str | None:
    """The id of the catalog's model that `name` names, if any."""
    try:
        return catalog.resolve(provider, name).model.id
    except PricingError:
        return None


def _differs(
    ours: ModelEntry,
    theirs: ModelEntry,
    our_tiers: Mapping[str, Any],
    their_tiers: Mapping[str, Any],
) -> str:
    """What the converted entry's current price changes in ours, in a few words (or '')."""
    mine, peer = ours.prices[-1], theirs.prices[-1]
    parts: list[str] = []
    for name, rate in peer.per_class().items():
        if mine.per_class()[name] != rate:
            parts.append(f"{name} {mine.per_class()[name]} -> {rate}")
    if (mine.long_context is None) != (peer.long_context is None):
        parts.append("long context " + ("added" if peer.long_context else "removed"))
    elif mine.long_context and peer.long_context and mine.long_context != peer.long_context:
        parts.append("long-context rates")
    if len(mine.time_of_day) != len(peer.time_of_day):
        parts.append("time-of-day windows")
    tiers = set(their_tiers) - set(our_tiers)
    if tiers:
        parts.append(f"tiers {', '.join(sorted(tiers))} added")
    return "; ".join(parts)
