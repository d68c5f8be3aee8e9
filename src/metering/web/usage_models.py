"""Response models shared by the usage endpoints. Exact amounts are decimal strings."""

from datetime import date

from pydantic import BaseModel

from metering import reports


class UsageGroupModel(BaseModel):
    """Usage of one group. `credits`: whole credits charged (or counted, if unbilled);
    `exact_credits`: their exact fractional sum; `cost_usd`: exact USD at catalog prices."""

    key: str
    provider: str | None
    model: str | None
    day: date | None
    calls: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_usd: str
    exact_credits: str
    credits: int
    unbilled_calls: int
    unbilled_credits: int

    @classmethod
    def of(cls, group: reports.UsageGroup) -> "UsageGroupModel":
        fields = vars(group) | {
            "cost_usd": str(group.cost_usd),
            "exact_credits": str(group.exact_credits),
        }
        return cls(**fields)
