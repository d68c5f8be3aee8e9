"""The shape of the price catalog file, validated by pydantic when loaded.

Invariants checked here: every price is a non-negative decimal given as a string or an integer
(never a float); effective dates are timezone-aware and strictly increasing per model; model ids
and aliases are unique within a provider; tier multipliers are positive; time-of-day windows are
UTC times of day with distinct start and end.
"""

from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from itertools import pairwise
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from metering.usage.event import STANDARD_TIER

TOKEN_CLASSES = ("input", "cached_input", "cache_write", "output", "reasoning")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _decimal(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f'give money as a string such as "2.50", not {type(value).__name__}')
    try:
        number = Decimal(value)
    except InvalidOperation as error:
        raise ValueError(f"{value!r} is not a decimal number") from error
    if not number.is_finite() or number < 0:
        raise ValueError(f"{value!r} must be a finite decimal >= 0")
    return number


def _from_iso_text(value: object, parse: Callable[[str], object], what: str) -> object:
    """The JSON layer writes times as ISO 8601 text: parsed here; TOML's own values pass."""
    if not isinstance(value, str):
        return value
    try:
        return parse(value)
    except ValueError as error:
        raise ValueError(f"{value!r} is not an ISO 8601 {what}") from error


def _aware(value: object) -> datetime:
    value = _from_iso_text(value, datetime.fromisoformat, "date-time")
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("effective dates need a UTC offset, e.g. 2025-06-10T00:00:00Z")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=UTC)
    raise ValueError(f"expected a TOML date or offset date-time, not {value!r}")


Money = Annotated[Decimal, BeforeValidator(_decimal)]
"""USD per million tokens (or a multiplier), exact."""
Instant = Annotated[datetime, BeforeValidator(_aware)]
"""An aware UTC datetime; a bare date means its midnight UTC."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Rates(_Strict):
    """USD per million tokens for each token class.

    A missing `cached_input` or `cache_write` costs as `input`; a missing `reasoning` costs as
    `output` (reasoning is billed as output unless the provider prices it apart).
    """

    input: Money
    output: Money
    cached_input: Money | None = None
    cache_write: Money | None = None
    reasoning: Money | None = None

    def per_class(self) -> dict[str, Decimal]:
        """Every token class's rate, fallbacks applied."""
        return {
            "input": self.input,
            "cached_input": self.input if self.cached_input is None else self.cached_input,
            "cache_write": self.input if self.cache_write is None else self.cache_write,
            "output": self.output,
            "reasoning": self.output if self.reasoning is None else self.reasoning,
        }


class LongContext(Rates):
    """Rates for every token of a call whose whole prompt exceeds `above_prompt_tokens`."""

    above_prompt_tokens: int = Field(gt=0, strict=True)


def _utc_time(value: object) -> time:
    value = _from_iso_text(value, time.fromisoformat, "time of day")
    if not isinstance(value, time):
        raise ValueError(f"give a TOML local time such as 16:30:00 (UTC), not {value!r}")
    if value.tzinfo is not None:
        raise ValueError("times of day are UTC; write them without an offset")
    return value


UtcTime = Annotated[time, BeforeValidator(_utc_time)]
"""A time of day in UTC."""


class TimeWindow(Rates):
    """Rates for calls made from `start` (inclusive) to `end` (exclusive), UTC, on `days`.

    A window whose `end` is earlier than its `start` crosses midnight. `days` are the UTC weekdays
    of the call itself (a call at 00:10 on a Saturday is a Saturday call); all days when omitted.
    """

    start: UtcTime
    end: UtcTime
    days: tuple[Weekday, ...] = WEEKDAYS

    @model_validator(mode="after")
    def _not_empty(self) -> "TimeWindow":
        if self.start == self.end:
            raise ValueError("a time window needs different start and end times")
        if not self.days:
            raise ValueError("a time window needs at least one day")
        return self

    def contains(self, at: datetime) -> bool:
        """Whether the UTC time `at` (an aware datetime in UTC) falls in this window."""
        if WEEKDAYS[at.weekday()] not in self.days:
            return False
        moment = at.time()
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


class PricePeriod(Rates):
    """Rates in force from `from_` until the next period of the same model.

    `time_of_day` windows replace the period's rates for calls inside them (the first window that
    contains the call applies); they cannot be combined with `long_context`.
    """

    from_: Instant = Field(alias="from")
    long_context: LongContext | None = None
    time_of_day: tuple[TimeWindow, ...] = ()

    @model_validator(mode="after")
    def _one_rule(self) -> "PricePeriod":
        if self.time_of_day and self.long_context is not None:
            raise ValueError("a period cannot have both long_context and time_of_day rates")
        return self

    def window_at(self, at: datetime) -> int | None:
        """The index of the first time window containing `at` (UTC), or None."""
        for index, window in enumerate(self.time_of_day):
            if window.contains(at):
                return index
        return None


class TierTable(_Strict):
    """A tier priced per token class: `every` class at one multiplier, unless named apart."""

    every: Money
    input: Money | None = None
    cached_input: Money | None = None
    cache_write: Money | None = None
    output: Money | None = None
    reasoning: Money | None = None


Tier = Money | TierTable


def _check_tiers(tiers: dict[str, Decimal | TierTable]) -> dict[str, Decimal | TierTable]:
    for name, tier in tiers.items():
        if name == STANDARD_TIER:
            raise ValueError("the standard tier is implicit (multiplier 1); do not list it")
        if any(multiplier <= 0 for multiplier in tier_multipliers(tier).values()):
            raise ValueError(f"tier {name!r} needs multipliers > 0")
    return tiers


Tiers = Annotated[dict[str, Tier], AfterValidator(_check_tiers)]
"""Service tier -> multipliers, the standard tier implicit, every multiplier > 0."""
"""A service tier: one multiplier on every rate ("0.5"), or a `TierTable`."""


def tier_multipliers(tier: Decimal | TierTable) -> dict[str, Decimal]:
    """Each token class's multiplier under a tier."""
    if isinstance(tier, Decimal):
        return dict.fromkeys(TOKEN_CLASSES, tier)
    named = {name: getattr(tier, name) for name in TOKEN_CLASSES}
    return {name: tier.every if value is None else value for name, value in named.items()}


class ModelEntry(_Strict):
    """One model: its canonical id, other spellings, the page its prices come from, and prices."""

    id: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    source: str = Field(pattern=r"^https://")
    checked: date
    """The day the prices were last compared with `source`."""
    tiers: Tiers | None = None
    """Service tier -> multipliers; replaces the provider's tiers when given."""
    prices: tuple[PricePeriod, ...] = Field(min_length=1)

    @field_validator("prices")
    @classmethod
    def _increasing(cls, prices: tuple[PricePeriod, ...]) -> tuple[PricePeriod, ...]:
        for earlier, later in pairwise(prices):
            if later.from_ <= earlier.from_:
                raise ValueError(
                    f"effective dates must increase: {later.from_.isoformat()} "
                    f"follows {earlier.from_.isoformat()}"
                )
        return prices


class ProviderEntry(_Strict):
    """One provider: its display name, other spellings, default tiers and models."""

    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    tiers: Tiers = {}
    models: tuple[ModelEntry, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "ProviderEntry":
        check_unique_names(self.models)
        return self


class CatalogFile(_Strict):
    """The whole file: when it was last updated, and the providers keyed by id."""

    updated: date
    providers: dict[str, ProviderEntry] = Field(min_length=1)


class OverlayProvider(_Strict):
    """A provider in an operator's file: `name` is needed only for a provider not shipped.

    `tiers` replace the shipped provider's tiers when given; `aliases` add to its own.
    """

    # Built when an operator's file is first read, not at every import.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    name: str | None = Field(default=None, min_length=1)
    aliases: tuple[str, ...] = ()
    tiers: Tiers | None = None
    models: tuple[ModelEntry, ...] = ()


class OverlayFile(_Strict):
    """An operator's file laid over the shipped catalog: models added or replaced by id."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    updated: date | None = None
    providers: dict[str, OverlayProvider] = Field(min_length=1)


def check_unique_names(models: tuple[ModelEntry, ...]) -> None:
    """Raise `ValueError` when two models of one provider share an id or alias."""
    owner: dict[str, str] = {}
    for model in models:
        for name in (model.id, *model.aliases):
            key = name.lower()
            if key in owner:
                raise ValueError(f"{name!r} of model {model.id!r} is already {owner[key]!r}")
            owner[key] = model.id
