"""`GET /users/{id}/balance` and `GET /users/{id}/transactions` (bearer token)."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from metering import reports
from metering.db import session_scope
from metering.models import TransactionType
from metering.web.auth import require_api_token
from metering.web.deps import State
from metering.web.usage_models import UsageGroupModel

router = APIRouter(prefix="/users", tags=["users"], dependencies=[Depends(require_api_token)])


class BalanceResponse(BaseModel):
    """`credits` in credits (1 credit = $0.001); `usd` is their exact value, a decimal string."""

    user_id: str
    email: str
    name: str | None
    credits: int
    usd: str
    updated_at: datetime


class TransactionItem(BaseModel):
    """One ledger row; `amount` in credits: PURCHASE, REFUND > 0, USAGE <= 0, ADJUSTMENT != 0."""

    id: str
    type: TransactionType
    amount: int
    description: str
    created_at: datetime
    experiment_id: str | None
    idempotency_key: str | None
    stripe_payment_id: str | None
    metadata: dict[str, Any] | None


class TransactionsResponse(BaseModel):
    """Newest first. Pass `next_cursor` as `cursor` for the next page; null on the last page."""

    user_id: str
    items: list[TransactionItem]
    next_cursor: str | None


Types = Annotated[list[TransactionType] | None, Query(description="Repeat to allow several.")]
Since = Annotated[datetime | None, Query(description="Inclusive; RFC 3339, UTC if no offset.")]
Until = Annotated[datetime | None, Query(description="Exclusive; RFC 3339, UTC if no offset.")]


class UsageReportResponse(BaseModel):
    """Usage charged to the user since `since`, grouped by provider, `provider/model` or day."""

    user_id: str
    by: reports.GroupBy
    since: datetime | None
    groups: list[UsageGroupModel]
    total: UsageGroupModel


@router.get("/{user_id}/balance")
async def get_balance(user_id: str, state: State) -> BalanceResponse:
    """The user's balance, by id or email. 404 for an unknown user."""
    async with session_scope(state.sessions) as session:
        balance = await reports.user_balance(session, user_id)
    return BalanceResponse(
        user_id=balance.user_id,
        email=balance.email,
        name=balance.name,
        credits=balance.credits,
        usd=str(balance.usd),
        updated_at=balance.updated_at,
    )


@router.get("/{user_id}/transactions")
async def list_transactions(
    user_id: str,
    state: State,
    type: Types = None,
    since: Since = None,
    until: Until = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=reports.MAX_PAGE)] = reports.DEFAULT_PAGE,
) -> TransactionsResponse:
    """A page of the user's transactions, filtered by type and time, newest first."""
    async with session_scope(state.sessions) as session:
        page = await reports.user_transactions(
            session,
            user_id,
            types=type or (),
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )
    return TransactionsResponse(
        user_id=page.user_id,
        items=[TransactionItem(**vars(row)) for row in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/{user_id}/usage")
async def get_usage(
    user_id: str, state: State, by: reports.GroupBy = reports.GroupBy.MODEL, since: Since = None
) -> UsageReportResponse:
    """The user's usage grouped by provider, model or day (UTC, by when it was charged)."""
    async with session_scope(state.sessions) as session:
        report = await reports.usage_report(session, user=user_id, by=by, since=since)
    return UsageReportResponse(
        user_id=report.scope_id,
        by=report.by,
        since=report.since,
        groups=[UsageGroupModel.of(group) for group in report.groups],
        total=UsageGroupModel.of(report.total),
    )
