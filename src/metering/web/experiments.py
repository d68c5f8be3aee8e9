"""`GET /experiments/{id}/usage` and `POST /experiments/{id}/estimate` (bearer token)."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from metering.budget import estimates
from metering.ledger import reports
from metering.ops.db import session_scope
from metering.pricing import EstimateItem, get_catalog
from metering.pricing.estimate import MAX_CALLS
from metering.web import errors
from metering.web.auth import require_api_token
from metering.web.deps import State
from metering.web.params import ExperimentId, in_utc

router = APIRouter(
    prefix="/experiments",
    tags=["experiments"],
    dependencies=[Depends(require_api_token)],
    responses=errors.responses(401, 404, 422, 503),
)


class EstimateRequest(BaseModel):
    """Expected calls per provider and model, with the tokens of each call: at most 1,000 items
    and 1,000,000,000 calls in all.

    `at` picks the prices in force then (default: now)."""

    model_config = ConfigDict(extra="forbid")

    items: Annotated[list[EstimateItem], Field(min_length=1, max_length=1000)]
    at: Annotated[AwareDatetime, AfterValidator(in_utc)] | None = None

    @model_validator(mode="after")
    def _bounded_calls(self) -> "EstimateRequest":
        calls = sum(item.calls for item in self.items)
        if calls > MAX_CALLS:
            raise ValueError(f"{calls:,} calls in all; an estimate covers at most {MAX_CALLS:,}")
        return self


@router.get("/{experiment_id}/usage")
async def get_usage(experiment_id: ExperimentId, state: State) -> reports.ExperimentUsage:
    """The experiment's usage, unbilled usage included. 404 for an unknown experiment."""
    async with session_scope(state.sessions) as session:
        usage = await reports.experiment_usage(
            session, experiment_id, catalog=get_catalog(state.settings.metering_price_catalog)
        )
    return usage


@router.post("/{experiment_id}/estimate", responses=errors.responses(400))
async def post_estimate(
    experiment_id: ExperimentId, body: EstimateRequest, state: State
) -> estimates.Estimate:
    """Price the expected calls under the experiment's apiKeyMode, markup and platform fee,
    store `estimatedCredits`, and say whether the owner's balance covers it.
    422 for an unpriced model or tier, 404 for an unknown experiment."""
    config = state.settings
    async with session_scope(state.sessions) as session:
        estimate = await estimates.record_estimate(
            session,
            experiment_id,
            body.items,
            catalog=get_catalog(config.metering_price_catalog),
            markup=config.metering_markup,
            platform_fee_usd_per_million=config.metering_platform_fee_usd_per_million,
            at=body.at or datetime.now(UTC),
        )
    return estimate
