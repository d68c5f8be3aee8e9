"""`GET /users/{id}/balance` and `GET /users/{id}/transactions` (bearer token)."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from metering.grants.read import Grant, open_grants
from metering.ledger import reports
from metering.ops.db import session_scope
from metering.ops.models import TransactionType
from metering.pricing import get_catalog
from metering.web import errors
from metering.web.auth import require_api_token
from metering.web.deps import State
from metering.web.params import UserKey, UtcDatetime

router = APIRouter(
    prefix="/users",
    tags=["users"],
    dependencies=[Depends(require_api_token)],
    responses=errors.responses(401, 404, 422, 503),
)


# The fields of `reports.UserBalance` under the name the OpenAPI schema has always given them.
# (Docstrings of response models are their OpenAPI descriptions, so the reasons live here.)
@dataclass(frozen=True)
class BalanceResponse(reports.UserBalance):
    """`credits` in credits (1 credit = $0.001); `usd` is their exact value, a decimal string.
    `grants`: the grants with credits left (part of `credits`), in the order usage draws them."""

    grants: list[Grant] = field(default_factory=list)


Types = Annotated[list[TransactionType] | None, Query(description="Repeat to allow several.")]
Since = Annotated[
    UtcDatetime | None, Query(description="Inclusive; RFC 3339, UTC if no offset, years 1-9999.")
]
Until = Annotated[
    UtcDatetime | None, Query(description="Exclusive; RFC 3339, UTC if no offset, years 1-9999.")
]


# Its own model: the API names the user `user_id` where `reports.UsageReport` has `scope_id`
# (and no `scope`).
class UsageReportResponse(BaseModel):
    """Usage charged to the user since `since`, grouped by provider, `provider/model` or day."""

    user_id: str = Field(validation_alias="scope_id")
    by: reports.GroupBy
    since: datetime | None
    groups: list[reports.UsageGroup]
    total: reports.UsageGroup


@router.get("/{user_id}/balance")
async def get_balance(user_id: UserKey, state: State) -> BalanceResponse:
    """The user's balance, by id or email. 404 for an unknown user."""
    async with session_scope(state.sessions) as session:
        balance = await reports.user_balance(session, user_id)
        grants = await open_grants(session, balance.user_id)
    return BalanceResponse(**vars(balance), grants=grants)


@router.get("/{user_id}/transactions")
async def list_transactions(
    user_id: UserKey,
    state: State,
    type: Types = None,
    since: Since = None,
    until: Until = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=reports.MAX_PAGE)] = reports.DEFAULT_PAGE,
) -> reports.TransactionPage:
    """A page of the user's transactions, filtered by type and time, newest first."""
    async with session_scope(state.sessions) as session:
        return await reports.user_transactions(
            session,
            user_id,
            types=type or (),
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )


@router.get("/{user_id}/usage")
async def get_usage(
    user_id: UserKey, state: State, by: reports.GroupBy = reports.GroupBy.MODEL, since: Since = None
) -> UsageReportResponse:
    """The user's usage grouped by provider, model or day (UTC, by when it was charged)."""
    async with session_scope(state.sessions) as session:
        report = await reports.usage_report(
            session,
            user=user_id,
            by=by,
            since=since,
            catalog=get_catalog(state.settings.metering_price_catalog),
        )
    return UsageReportResponse.model_validate(report, from_attributes=True)
