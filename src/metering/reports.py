"""Read-only reports over the ledger: balances, transaction pages and usage breakdowns.

Nothing here writes. Each report is one SQL query (plus the lookup of its user or experiment);
usage is aggregated in PostgreSQL from the USAGE rows' JSONB metadata (`provider`, `model`, the
token counts, `costUsd`, `exactCredits`) and from `UnbilledUsage` for experiments without a user,
so a breakdown's credits always add up to the ledger's. Times are UTC; the ledger's time is a
row's `createdAt` (when it was charged).
"""

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, localcontext
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Numeric,
    Subquery,
    false,
    func,
    literal,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from metering import accounts
from metering.errors import PermanentError
from metering.models import CreditTransaction, MAACExperiment, TransactionType, UnbilledUsage
from metering.pricing.calculator import EXACT
from metering.pricing.money import USD_PER_CREDIT

DEFAULT_PAGE = 50
MAX_PAGE = 500
TOKEN_KINDS = (
    ("input_tokens", "inputTokens"),
    ("output_tokens", "outputTokens"),
    ("cached_input_tokens", "cachedInputTokens"),
    ("cache_write_tokens", "cacheWriteTokens"),
    ("reasoning_tokens", "reasoningTokens"),
)
"""Report field and the USAGE metadata key it sums."""


class InvalidQuery(PermanentError):
    """A report was asked for with arguments it cannot honour (a bad cursor, a bad limit)."""

    code = "invalid_query"


class GroupBy(StrEnum):
    PROVIDER = "provider"
    MODEL = "model"
    DAY = "day"


@dataclass(frozen=True)
class UserBalance:
    """A user's balance: `credits` (1 credit = $0.001) and `usd`, its exact value in dollars."""

    user_id: str
    email: str
    name: str | None
    credits: int
    usd: Decimal
    updated_at: datetime


@dataclass(frozen=True)
class TransactionRow:
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


@dataclass(frozen=True)
class TransactionPage:
    """Newest first. Pass `next_cursor` as `cursor` for the next page; null on the last page."""

    user_id: str
    items: list[TransactionRow]
    next_cursor: str | None


@dataclass(frozen=True)
class UsageGroup:
    """Usage of one group. Credits are whole credits charged (or counted, when unbilled);
    `exact_credits` and `cost_usd` are exact sums of the per-call values (USD at catalog price).
    `key` names the group: provider, `provider/model`, or the day (YYYY-MM-DD)."""

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
    cost_usd: Decimal
    exact_credits: Decimal
    credits: int
    unbilled_calls: int
    unbilled_credits: int


@dataclass(frozen=True)
class UsageReport:
    """Usage of a user or an experiment since `since` (None: all of it), grouped by `by`."""

    scope: str
    scope_id: str
    by: GroupBy
    since: datetime | None
    groups: list[UsageGroup]
    total: UsageGroup


@dataclass(frozen=True)
class ExperimentUsage:
    """An experiment's usage by provider and model, beside its estimate and recorded totals.

    `credits_used` and `exact_credits_used` are the experiment's columns; `total.credits` always
    equals `credits_used` (the ledger's invariant). `estimate_delta` = `credits_used` -
    `estimated_credits` (positive: over the estimate)."""

    experiment_id: str
    name: str
    status: str
    user_id: str | None
    api_key_mode: str
    estimated_credits: int | None
    credits_used: int
    exact_credits_used: Decimal
    estimate_delta: int | None
    groups: list[UsageGroup]
    total: UsageGroup


def to_utc(moment: datetime) -> datetime:
    """A naive UTC datetime as the ledger stores it; naive input is taken as UTC already."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def aware(moment: datetime) -> datetime:
    """A ledger time (naive, UTC) with its time zone made explicit."""
    return moment.replace(tzinfo=UTC)


async def user_balance(session: AsyncSession, id_or_email: str) -> UserBalance:
    """The user's balance; `accounts.NotFound` for an unknown id or email."""
    user = await accounts.find_user(session, id_or_email)
    return UserBalance(
        user_id=user.id,
        email=user.email,
        name=user.name,
        credits=user.credits,
        usd=Decimal(user.credits) * USD_PER_CREDIT,
        updated_at=aware(user.updated_at),
    )


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (createdAt, id) a cursor points after; `InvalidQuery` unless made by `encode_cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
        if not isinstance(row_id, str) or not isinstance(created_at, str) or "\x00" in row_id:
            raise ValueError("wrong shape")
        row_id.encode()  # a lone surrogate (a JSON escape) is no text PostgreSQL can hold
        return to_utc(datetime.fromisoformat(created_at)), row_id
    except (ValueError, TypeError, OverflowError, binascii.Error) as error:
        raise InvalidQuery("cursor is not one this API returned", code="invalid_cursor") from error


async def user_transactions(
    session: AsyncSession,
    id_or_email: str,
    *,
    types: Sequence[TransactionType] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_PAGE,
) -> TransactionPage:
    """A page of the user's transactions, newest first, keyset-paginated over (createdAt, id).

    `since` is inclusive, `until` exclusive. Rows committed after a walk began sort before its
    cursor, so following `next_cursor` returns every row that existed at the start exactly once.
    (`createdAt` is its transaction's start time: a transaction still running when a walk passes
    its time can land behind the cursor; pages never repeat a row either way.)
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidQuery(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    user = await accounts.find_user(session, id_or_email)
    t = CreditTransaction
    query = select(t).where(t.user_id == user.id)
    if types:
        query = query.where(t.type.in_(list(types)))
    if since is not None:
        query = query.where(t.created_at >= to_utc(since))
    if until is not None:
        query = query.where(t.created_at < to_utc(until))
    if cursor is not None:
        after_created_at, after_id = decode_cursor(cursor)
        query = query.where(tuple_(t.created_at, t.id) < tuple_(after_created_at, after_id))
    query = query.order_by(t.created_at.desc(), t.id.desc()).limit(limit + 1)
    rows = list(await session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        TransactionRow(
            id=row.id,
            type=row.type,
            amount=row.amount,
            description=row.description,
            created_at=aware(row.created_at),
            experiment_id=row.experiment_id,
            idempotency_key=row.idempotency_key,
            stripe_payment_id=row.stripe_payment_id,
            metadata=row.metadata_,
        )
        for row in rows
    ]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
    return TransactionPage(user.id, items, next_cursor)


def _usage_rows(
    *, user_id: str | None, experiment_id: str | None, since: datetime | None
) -> Subquery:
    """USAGE rows (and, for an experiment, its unbilled usage) as one row set to aggregate."""
    t = CreditTransaction
    billed = select(
        t.created_at.label("created_at"),
        t.amount.label("amount"),
        t.metadata_.label("metadata"),
        false().label("unbilled"),
    ).where(t.type == TransactionType.USAGE)
    if user_id is not None:
        billed = billed.where(t.user_id == user_id)
    if experiment_id is not None:
        billed = billed.where(t.experiment_id == experiment_id)
    if since is not None:
        billed = billed.where(t.created_at >= to_utc(since))
    if experiment_id is None:
        return billed.subquery()
    n = UnbilledUsage
    unbilled = select(n.created_at, n.amount, n.metadata_, true().label("unbilled")).where(
        n.experiment_id == experiment_id
    )
    if since is not None:
        unbilled = unbilled.where(n.created_at >= to_utc(since))
    return union_all(billed, unbilled).subquery()


async def _aggregate(
    session: AsyncSession,
    *,
    by: GroupBy,
    user_id: str | None = None,
    experiment_id: str | None = None,
    since: datetime | None = None,
) -> list[UsageGroup]:
    """One GROUP BY over the usage rows, in key order."""
    usage = _usage_rows(user_id=user_id, experiment_id=experiment_id, since=since)
    metadata = usage.c.metadata
    provider = metadata["provider"].astext
    model = metadata["model"].astext
    day = func.date_trunc("day", usage.c.created_at)
    keys: list[ColumnElement[Any]] = {
        GroupBy.PROVIDER: [provider],
        GroupBy.MODEL: [provider, model],
        GroupBy.DAY: [day],
    }[by]
    tokens = [
        func.coalesce(func.sum(metadata[key].astext.cast(BigInteger)), 0).label(field)
        for field, key in TOKEN_KINDS
    ]
    query = select(
        provider.label("provider") if by in (GroupBy.PROVIDER, GroupBy.MODEL) else literal(None),
        model.label("model") if by is GroupBy.MODEL else literal(None),
        day.label("day") if by is GroupBy.DAY else literal(None),
        func.count().label("calls"),
        *tokens,
        func.coalesce(func.sum(metadata["costUsd"].astext.cast(Numeric)), 0).label("cost_usd"),
        func.coalesce(func.sum(metadata["exactCredits"].astext.cast(Numeric)), 0).label("exact"),
        (-func.coalesce(func.sum(usage.c.amount), 0)).label("credits"),
        func.count().filter(usage.c.unbilled).label("unbilled_calls"),
        (-func.coalesce(func.sum(usage.c.amount).filter(usage.c.unbilled), 0)).label(
            "unbilled_credits"
        ),
    ).select_from(usage)
    query = query.group_by(*keys).order_by(*keys)
    return [_group(*row) for row in (await session.execute(query)).all()]


def _group(
    provider: str | None,
    model: str | None,
    day: datetime | None,
    calls: int,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int,
    cache_write_tokens: int,
    reasoning_tokens: int,
    cost_usd: Decimal,
    exact: Decimal,
    credits: int,
    unbilled_calls: int,
    unbilled_credits: int,
) -> UsageGroup:
    if day is not None:
        key = day.date().isoformat()
    elif model is not None:
        key = f"{provider}/{model}"
    else:
        key = provider or "total"
    return UsageGroup(
        key=key,
        provider=provider,
        model=model,
        day=day.date() if day is not None else None,
        calls=int(calls),
        input_tokens=int(input_tokens),
        output_tokens=int(output_tokens),
        cached_input_tokens=int(cached_input_tokens),
        cache_write_tokens=int(cache_write_tokens),
        reasoning_tokens=int(reasoning_tokens),
        cost_usd=exact_decimal(cost_usd),
        exact_credits=exact_decimal(exact),
        credits=int(credits),
        unbilled_calls=int(unbilled_calls),
        unbilled_credits=int(unbilled_credits),
    )


def sum_groups(groups: Sequence[UsageGroup]) -> UsageGroup:
    """The total of several groups, exactly (integers and Decimals only)."""
    fields = ("calls", *(field for field, _ in TOKEN_KINDS), "credits", "unbilled_calls")
    counts = {name: sum(getattr(g, name) for g in groups) for name in fields}
    return UsageGroup(
        key="total",
        provider=None,
        model=None,
        day=None,
        cost_usd=exact_decimal(sum((g.cost_usd for g in groups), Decimal(0))),
        exact_credits=exact_decimal(sum((g.exact_credits for g in groups), Decimal(0))),
        unbilled_credits=sum(g.unbilled_credits for g in groups),
        **counts,
    )


def exact_decimal(value: Decimal | int) -> Decimal:
    """The same number without trailing zeros or an exponent (`0.000120` -> `0.00012`)."""
    with localcontext(EXACT):
        value = Decimal(value)
        if value == 0:
            return Decimal(0)
        normal = value.normalize()
        return normal.quantize(Decimal(1)) if normal == normal.to_integral_value() else normal


async def usage_report(
    session: AsyncSession,
    *,
    user: str | None = None,
    experiment_id: str | None = None,
    by: GroupBy = GroupBy.MODEL,
    since: datetime | None = None,
) -> UsageReport:
    """Usage of exactly one of a user (id or email) or an experiment, grouped by `by`.

    A user's usage is what was charged to them; an experiment's includes unbilled usage.
    """
    if (user is None) == (experiment_id is None):
        raise InvalidQuery("give either a user or an experiment")
    if user is not None:
        scope, scope_id = "user", (await accounts.find_user(session, user)).id
        groups = await _aggregate(session, by=by, user_id=scope_id, since=since)
    else:
        assert experiment_id is not None
        scope, scope_id = "experiment", (await accounts.find_experiment(session, experiment_id)).id
        groups = await _aggregate(session, by=by, experiment_id=scope_id, since=since)
    return UsageReport(scope, scope_id, by, since, groups, sum_groups(groups))


async def experiment_usage(session: AsyncSession, experiment_id: str) -> ExperimentUsage:
    """The experiment's usage by provider and model with its estimate; `NotFound` if unknown."""
    experiment: MAACExperiment = await accounts.find_experiment(session, experiment_id)
    groups = await _aggregate(session, by=GroupBy.MODEL, experiment_id=experiment.id)
    estimated = experiment.estimated_credits
    return ExperimentUsage(
        experiment_id=experiment.id,
        name=experiment.name,
        status=experiment.status,
        user_id=experiment.user_id,
        api_key_mode=experiment.api_key_mode,
        estimated_credits=estimated,
        credits_used=experiment.credits_used,
        exact_credits_used=exact_decimal(experiment.exact_credits_used),
        estimate_delta=None if estimated is None else experiment.credits_used - estimated,
        groups=groups,
        total=sum_groups(groups),
    )
