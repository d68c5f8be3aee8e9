"""The shape of the price catalog file, validated by pydantic when loaded.

Invariants checked here: every price is a non-negative decimal given as a string or an integer
(never a float); effective dates are timezone-aware and strictly increasing per model; model ids
and aliases are unique within a provider; tier multipliers are positive.
"""

from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from itertools import pairwise
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

STANDARD_TIER = "standard"


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


def _aware(value: object) -> datetime:
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


class PricePeriod(Rates):
    """Rates in force from `from_` until the next period of the same model."""

    from_: Instant = Field(alias="from")
    long_context: LongContext | None = None


class ModelEntry(_Strict):
    """One model: its canonical id, other spellings, the page its prices come from, and prices."""

    id: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    source: str = Field(pattern=r"^https://")
    checked: date
    """The day the prices were last compared with `source`."""
    tiers: dict[str, Money] | None = None
    """Service tier -> multiplier on every rate; replaces the provider's tiers when given."""
    prices: tuple[PricePeriod, ...] = Field(min_length=1)

    @field_validator("tiers")
    @classmethod
    def _positive(cls, tiers: dict[str, Decimal] | None) -> dict[str, Decimal] | None:
        return None if tiers is None else _check_tiers(tiers)

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
    tiers: dict[str, Money] = {}
    models: tuple[ModelEntry, ...] = Field(min_length=1)

    @field_validator("tiers")
    @classmethod
    def _positive(cls, tiers: dict[str, Decimal]) -> dict[str, Decimal]:
        return _check_tiers(tiers)

    @model_validator(mode="after")
    def _unique_names(self) -> "ProviderEntry":
        owner: dict[str, str] = {}
        for model in self.models:
            for name in (model.id, *model.aliases):
                key = name.lower()
                if key in owner:
                    raise ValueError(f"{name!r} of model {model.id!r} is already {owner[key]!r}")
                owner[key] = model.id
        return self


class CatalogFile(_Strict):
    """The whole file: when it was last updated, and the providers keyed by id."""

    updated: date
    providers: dict[str, ProviderEntry] = Field(min_length=1)


def _check_tiers(tiers: dict[str, Decimal]) -> dict[str, Decimal]:
    for name, multiplier in tiers.items():
        if name == STANDARD_TIER:
            raise ValueError("the standard tier is implicit (multiplier 1); do not list it")
        if multiplier <= 0:
            raise ValueError(f"tier {name!r} needs a multiplier > 0")
    return tiers
