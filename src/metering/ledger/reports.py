"""Read-only reports over the ledger: balances, transaction pages and usage breakdowns.

Nothing here writes. Balances and transaction pages read `CreditTransaction`; usage breakdowns
read the typed call records (`UsageCall`, one per charged call, unbilled ones with no `userId`),
so a breakdown's credits add up to the ledger's for every call still recorded (calls archived
by `metering calls archive` leave the breakdowns). USD at catalog price is recomputed from each
call's token counts, tier and `occurredAt` with the catalog in use. Times are UTC; a call's
time in a report is its `createdAt` (when it was charged).
"""

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal, localcontext
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Select, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from metering.errors import PermanentError
from metering.ledger import accounts
from metering.ops.models import CreditTransaction, MAACExperiment, TransactionType, UsageCall
from metering.pricing import Catalog, TokenUsage
from metering.pricing.calculator import EXACT, cost_usd
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
"""Report field and the camelCase name the platform gives it."""


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
    """An experiment's usage by provider and model (`by_model`), its total, and the estimate
    beside what was used.

    `credits_used` and `exact_credits_used` are the experiment's columns; `total.credits` equals
    `credits_used` (the ledger's invariant) while none of its call records is archived.
    `estimate_delta` = `credits_used` - `estimated_credits` (positive: over the estimate), null
    without an estimate."""

    experiment_id: str
    name: str
    status: str
    user_id: str | None
    api_key_mode: str
    estimated_credits: int | None
    credits_used: int
    exact_credits_used: Decimal
    estimate_delta: int | None
    by_model: list[UsageGroup]
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


def _scoped(query: Select[Any], scope: "_Scope") -> Select[Any]:
    """`query` over the call records of one user or one experiment, since `scope.since`."""
    c = UsageCall
    if scope.user_id is not None:
        query = query.where(c.user_id == scope.user_id)
    if scope.experiment_id is not None:
        query = query.where(c.experiment_id == scope.experiment_id)
    if scope.since is not None:
        query = query.where(c.created_at >= to_utc(scope.since))
    return query


@dataclass(frozen=True)
class _Scope:
    user_id: str | None
    experiment_id: str | None
    since: datetime | None


def _day() -> ColumnElement[datetime]:
    """The UTC day a call was charged."""
    return func.date_trunc("day", UsageCall.created_at)


async def _aggregate(
    session: AsyncSession,
    catalog: Catalog,
    *,
    by: GroupBy,
    user_id: str | None = None,
    experiment_id: str | None = None,
    since: datetime | None = None,
) -> list[UsageGroup]:
    """One GROUP BY over the call records, by the report's key and each call's (provider,
    model, tier), folded into the report's groups in key order. Calls without a user
    (`userId` NULL) are the unbilled ones."""
    scope = _Scope(user_id, experiment_id, since)
    c = UsageCall
    unbilled = c.user_id.is_(None)
    prompt = c.input_tokens + c.cached_input_tokens + c.cache_write_tokens
    day = _day() if by is GroupBy.DAY else literal(None)
    keys: list[ColumnElement[Any]] = [day, c.provider, c.model, c.tier]  # type: ignore[list-item]
    order = {GroupBy.PROVIDER: keys[1:2], GroupBy.MODEL: keys[1:3]}.get(by, keys[:1])
    query = select(
        *keys,
        func.count(),
        *(func.sum(getattr(c, field)) for field, _ in TOKEN_KINDS),
        func.sum(c.exact_credits),
        func.sum(c.credits),
        func.count().filter(unbilled),
        func.coalesce(func.sum(c.credits).filter(unbilled), 0),
        func.min(c.occurred_at),
        func.max(c.occurred_at),
        func.min(prompt),
        func.max(prompt),
    )
    query = _scoped(query, scope).group_by(*keys).order_by(*order, c.tier)
    groups: dict[str, list[UsageGroup]] = {}
    for result in (await session.execute(query)).all():
        row: tuple[Any, ...] = tuple(result)
        day_at, provider, model, tier = row[:4]
        cost = await _cost_usd(session, catalog, scope, day_at, (provider, model, tier), row)
        calls, fresh, output, cached, written, reasoning = row[4:10]
        exact, credits, unbilled_calls, unbilled_credits = row[10:14]
        group = _group(
            provider if by is not GroupBy.DAY else None,
            model if by is GroupBy.MODEL else None,
            day_at,
            calls,
            fresh,
            output,
            cached,
            written,
            reasoning,
            cost,
            exact,
            credits,
            unbilled_calls,
            unbilled_credits,
        )
        groups.setdefault(group.key, []).append(group)
    return [_merge(key, parts) for key, parts in groups.items()]


def _merge(key: str, parts: list[UsageGroup]) -> UsageGroup:
    """One report group from its parts (one per tier or model), exactly."""
    if len(parts) == 1:
        return parts[0]
    total = sum_groups(parts)
    first = parts[0]
    return replace(total, key=key, provider=first.provider, model=first.model, day=first.day)


async def _cost_usd(
    session: AsyncSession,
    catalog: Catalog,
    scope: _Scope,
    day: datetime | None,
    call: tuple[str, str, str],
    row: tuple[Any, ...],
) -> Decimal:
    """Exact USD at catalog price of the calls summed in `row`. Cost is linear in the token
    counts at one set of rates, so the summed counts are priced once when every call had the
    same rates (one price period, no time-of-day window, all or none past the long-context
    threshold); otherwise each call is priced (`_cost_per_call`)."""
    provider, model, tier = call
    first, last, least_prompt, most_prompt = row[14:18]
    resolved = catalog.resolve(provider, model)
    period = resolved.period_at(aware(first))
    above = None if period.long_context is None else period.long_context.above_prompt_tokens
    if (
        period is not resolved.period_at(aware(last))
        or period.time_of_day
        or (above is not None and least_prompt <= above < most_prompt)
    ):
        return await _cost_per_call(session, catalog, scope, day, call)
    probe = catalog.price_call(provider, model, TokenUsage(int(most_prompt), 0), aware(first), tier)
    rates = {token_class: Decimal(price) for token_class, price in probe.prices.items()}
    return cost_usd(rates, TokenUsage(*(int(count) for count in row[5:10])))


async def _cost_per_call(
    session: AsyncSession,
    catalog: Catalog,
    scope: _Scope,
    day: datetime | None,
    call: tuple[str, str, str],
) -> Decimal:
    """Exact USD at catalog price of these calls, each priced as the pipeline priced it."""
    c = UsageCall
    provider, model, tier = call
    query = select(*(getattr(c, field) for field, _ in TOKEN_KINDS), c.occurred_at).where(
        c.provider == provider, c.model == model, c.tier == tier
    )
    if day is not None:
        query = query.where(_day() == day)
    total = Decimal(0)
    with localcontext(EXACT):
        for fresh, output, cached, written, reasoning, occurred_at in await session.execute(
            _scoped(query, scope)
        ):
            usage = TokenUsage(fresh, output, cached, written, reasoning)
            total += catalog.price_call(provider, model, usage, aware(occurred_at), tier).usd
    return total


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
    with localcontext(EXACT):
        cost = sum((g.cost_usd for g in groups), Decimal(0))
        exact = sum((g.exact_credits for g in groups), Decimal(0))
    return UsageGroup(
        key="total",
        provider=None,
        model=None,
        day=None,
        cost_usd=exact_decimal(cost),
        exact_credits=exact_decimal(exact),
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
    catalog: Catalog,
) -> UsageReport:
    """Usage of exactly one of a user (id or email) or an experiment, grouped by `by`, USD
    priced by `catalog`.

    A user's usage is the calls charged to them; an experiment's includes unbilled calls.
    """
    if (user is None) == (experiment_id is None):
        raise InvalidQuery("give either a user or an experiment")
    if user is not None:
        scope, scope_id = "user", (await accounts.find_user(session, user)).id
        groups = await _aggregate(session, catalog, by=by, user_id=scope_id, since=since)
    else:
        assert experiment_id is not None
        scope, scope_id = "experiment", (await accounts.find_experiment(session, experiment_id)).id
        groups = await _aggregate(session, catalog, by=by, experiment_id=scope_id, since=since)
    return UsageReport(scope, scope_id, by, since, groups, sum_groups(groups))


async def experiment_usage(
    session: AsyncSession, experiment_id: str, *, catalog: Catalog
) -> ExperimentUsage:
    """The experiment's usage by provider and model with its estimate; `NotFound` if unknown."""
    experiment: MAACExperiment = await accounts.find_experiment(session, experiment_id)
    groups = await _aggregate(session, catalog, by=GroupBy.MODEL, experiment_id=experiment.id)
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
        by_model=groups,
        total=sum_groups(groups),
    )
