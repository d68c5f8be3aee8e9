"""Reports against a real PostgreSQL: balances, transaction pages, usage breakdowns, estimates."""

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.budget import estimates
from metering.ledger import accounts, journal, reports
from metering.ops.db import session_scope
from metering.ops.models import CreditTransaction, MAACExperiment, TransactionType
from metering.pricing import EstimateItem, UnknownModel, get_catalog
from metering.usage.event import UsageEvent
from metering.usage.price import token_usage
from tests.factories import create_experiment, create_user, unique
from tests.usage_data import charge_events, event

Sessions = async_sessionmaker[AsyncSession]
CATALOG = get_catalog(None)


async def post(sessions: Sessions, user_id: str, type_: TransactionType, amount: int) -> None:
    """One row in its own transaction, so each row gets its own `createdAt`."""
    async with session_scope(sessions) as session:
        await journal.post(
            session,
            journal.Posting(user_id, type_, amount, "test", unique("key")),
        )


async def walk(sessions: Sessions, user_id: str, limit: int, **filters: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        async with session_scope(sessions) as session:
            page = await reports.user_transactions(
                session, user_id, cursor=cursor, limit=limit, **filters
            )
        assert len(page.items) <= limit
        ids += [row.id for row in page.items]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


async def all_rows(sessions: Sessions, user_id: str) -> list[CreditTransaction]:
    async with session_scope(sessions) as session:
        rows = await session.scalars(
            select(CreditTransaction)
            .where(CreditTransaction.user_id == user_id)
            .order_by(CreditTransaction.created_at.desc(), CreditTransaction.id.desc())
        )
        return list(rows)


async def test_balance_by_id_or_email_and_unknown_user(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_234)
    async with session_scope(sessions) as session:
        by_id = await reports.user_balance(session, user_id)
        by_email = await reports.user_balance(session, f"{user_id}@example.com")
        with pytest.raises(accounts.NotFound):
            await reports.user_balance(session, "nobody")
    assert by_id == by_email
    assert (by_id.credits, by_id.usd) == (1_234, Decimal("1.234"))
    assert by_id.updated_at.tzinfo is UTC


async def test_pages_walk_every_row_once_newest_first(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100)
        # Rows of one transaction share createdAt: the id breaks the tie.
        for amount in (1, 2, 3):
            await journal.post(
                session,
                journal.Posting(user_id, TransactionType.ADJUSTMENT, amount, "t", unique("k")),
            )
    for amount in (-5, 7, -9, 11):
        await post(sessions, user_id, TransactionType.ADJUSTMENT, amount)

    expected = [row.id for row in await all_rows(sessions, user_id)]
    assert len(expected) == 8
    for limit in (1, 3, 8, 500):
        assert await walk(sessions, user_id, limit) == expected


async def test_rows_inserted_between_pages_neither_repeat_nor_hide_older_rows(
    sessions: Sessions,
) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100)
    for amount in range(1, 7):
        await post(sessions, user_id, TransactionType.ADJUSTMENT, amount)
    before = [row.id for row in await all_rows(sessions, user_id)]

    seen: list[str] = []
    cursor = None
    while True:
        async with session_scope(sessions) as session:
            page = await reports.user_transactions(session, user_id, cursor=cursor, limit=2)
        seen += [row.id for row in page.items]
        await post(sessions, user_id, TransactionType.PURCHASE, 10)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seen == before
    assert len(await all_rows(sessions, user_id)) == len(before) + 4


async def test_filters_by_type_and_time(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_000)
    await post(sessions, user_id, TransactionType.ADJUSTMENT, -3)
    await post(sessions, user_id, TransactionType.REFUND, 4)
    await post(sessions, user_id, TransactionType.ADJUSTMENT, 5)
    rows = await all_rows(sessions, user_id)
    newest, middle, oldest_adjustment, purchase = rows

    adjustments = await walk(sessions, user_id, 1, types=[TransactionType.ADJUSTMENT])
    assert adjustments == [newest.id, oldest_adjustment.id]
    two_types = await walk(
        sessions, user_id, 10, types=[TransactionType.PURCHASE, TransactionType.REFUND]
    )
    assert two_types == [middle.id, purchase.id]

    since = middle.created_at.replace(tzinfo=UTC)
    assert await walk(sessions, user_id, 10, since=since) == [newest.id, middle.id]
    # `until` is exclusive; a time with another offset means the same instant.
    until = newest.created_at.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert await walk(sessions, user_id, 10, since=since, until=until) == [middle.id]
    assert await walk(sessions, user_id, 10, until=purchase.created_at) == []


async def test_bad_cursors_and_limits_are_refused(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 10)
        for cursor in ("not-a-cursor", "W10", reports.encode_cursor(datetime.now(UTC), "x")[:-3]):
            with pytest.raises(reports.InvalidQuery):
                await reports.user_transactions(session, user_id, cursor=cursor)
        for limit in (0, reports.MAX_PAGE + 1):
            with pytest.raises(reports.InvalidQuery):
                await reports.user_transactions(session, user_id, limit=limit)
        with pytest.raises(accounts.NotFound):
            await reports.user_transactions(session, "nobody")


def documents(experiment_id: str, count: int) -> list[dict[str, Any]]:
    return [
        event(experiment_id, n, cached_input_tokens=50 * (n % 3), reasoning_tokens=n % 5)
        for n in range(count)
    ]


def expected_by_model(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Calls, tokens and exact USD per `provider/model`, computed event by event."""
    catalog = get_catalog(None)
    groups: dict[str, dict[str, Any]] = defaultdict(Counter)
    for document in docs:
        parsed = UsageEvent.model_validate(document)
        cost = catalog.price_call(
            parsed.provider, parsed.model, token_usage(parsed), parsed.occurred_at
        )
        group = groups[f"{cost.provider}/{cost.model}"]
        group["calls"] += 1
        group["input_tokens"] += parsed.input_tokens
        group["output_tokens"] += parsed.output_tokens
        group["cached_input_tokens"] += parsed.cached_input_tokens
        group["reasoning_tokens"] += parsed.reasoning_tokens
        group["cost_usd"] += cost.usd
    return groups


async def usage_sum(session: AsyncSession, experiment_id: str) -> int:
    total = await session.scalar(
        select(func.sum(CreditTransaction.amount)).where(
            CreditTransaction.experiment_id == experiment_id,
            CreditTransaction.type == TransactionType.USAGE,
        )
    )
    return -int(total or 0)


async def test_experiment_breakdown_sums_equal_the_ledger(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_000_000)
        experiment_id = await create_experiment(session, user_id)
    docs = documents(experiment_id, 30)
    # Three batches, so the carry spreads whole credits over several transactions.
    for start in range(0, 30, 10):
        async with session_scope(sessions) as session:
            await charge_events(session, docs[start : start + 10])

    async with session_scope(sessions) as session:
        usage = await reports.experiment_usage(session, experiment_id, catalog=CATALOG)
        ledger_credits = await usage_sum(session, experiment_id)
        experiment = await session.get(MAACExperiment, experiment_id)
    assert experiment is not None

    expected = expected_by_model(docs)
    assert [g.key for g in usage.by_model] == sorted(expected)
    for group in usage.by_model:
        want = expected[group.key]
        assert group.calls == want["calls"]
        assert group.input_tokens == want["input_tokens"]
        assert group.output_tokens == want["output_tokens"]
        assert group.cached_input_tokens == want["cached_input_tokens"]
        assert group.reasoning_tokens == want["reasoning_tokens"]
        assert group.cost_usd == want["cost_usd"]
        assert (group.unbilled_calls, group.unbilled_credits) == (0, 0)
    total = usage.total
    assert total.calls == 30 == sum(g.calls for g in usage.by_model)
    assert total.credits == ledger_credits == usage.credits_used == experiment.credits_used > 0
    assert total.exact_credits == experiment.exact_credits_used == usage.exact_credits_used
    assert total.cost_usd == sum((g["cost_usd"] for g in expected.values()), Decimal(0))
    assert (usage.estimated_credits, usage.estimate_delta) == (None, None)


async def test_unbilled_usage_of_a_userless_experiment_is_reported(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        experiment_id = await create_experiment(session, None)
        await charge_events(session, documents(experiment_id, 6))
    async with session_scope(sessions) as session:
        usage = await reports.experiment_usage(session, experiment_id, catalog=CATALOG)
        with pytest.raises(accounts.NotFound):
            await reports.experiment_usage(session, "no-such-experiment", catalog=CATALOG)
    assert usage.user_id is None
    assert usage.total.calls == usage.total.unbilled_calls == 6
    assert usage.total.credits == usage.total.unbilled_credits == usage.credits_used > 0


async def test_usage_of_a_user_by_provider_and_day_since(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_000_000)
        first = await create_experiment(session, user_id)
        second = await create_experiment(session, user_id, "own")
        await charge_events(session, documents(first, 6), platform_fee=Decimal("0.5"))
        await charge_events(session, documents(second, 3), platform_fee=Decimal("0.5"))
        await create_experiment(session, None)

    async with session_scope(sessions) as session:
        by_provider = await reports.usage_report(
            session, user=user_id, by=reports.GroupBy.PROVIDER, catalog=CATALOG
        )
        by_day = await reports.usage_report(
            session, user=user_id, by=reports.GroupBy.DAY, catalog=CATALOG
        )
        by_model = await reports.usage_report(
            session, experiment_id=second, by=reports.GroupBy.MODEL, catalog=CATALOG
        )
        later = await reports.usage_report(
            session, user=user_id, since=datetime.now(UTC) + timedelta(minutes=5), catalog=CATALOG
        )
        credits_charged = -int(
            await session.scalar(
                select(func.sum(CreditTransaction.amount)).where(
                    CreditTransaction.user_id == user_id,
                    CreditTransaction.type == TransactionType.USAGE,
                )
            )
            or 0
        )
        with pytest.raises(reports.InvalidQuery):
            await reports.usage_report(session, catalog=CATALOG)

    assert [g.key for g in by_provider.groups] == ["anthropic", "google", "openai"]
    assert [g.calls for g in by_provider.groups] == [3, 3, 3]
    assert by_provider.total.credits == by_day.total.credits == credits_charged
    (today,) = by_day.groups
    assert today.day == datetime.now(UTC).date()
    assert today.key == today.day.isoformat()
    assert by_provider.total.exact_credits == today.exact_credits
    assert by_model.total.calls == 3
    assert (later.groups, later.total.calls, later.total.credits) == ([], 0, 0)


async def estimate(
    session: AsyncSession, experiment_id: str, items: list[EstimateItem]
) -> estimates.Estimate:
    """Markup 2 and a platform fee of $0.50 per million tokens, at 2025-09-01 prices."""
    return await estimates.record_estimate(
        session,
        experiment_id,
        items,
        catalog=get_catalog(None),
        markup=Decimal(2),
        platform_fee_usd_per_million=Decimal("0.5"),
        at=datetime(2025, 9, 1, tzinfo=UTC),
    )


async def test_estimate_is_stored_and_compared_with_the_balance(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_250)
        system = await create_experiment(session, user_id)
        own = await create_experiment(session, user_id, "own")
        ownerless = await create_experiment(session, None)
    items = [
        EstimateItem(
            provider="openai",
            model="gpt-4o-mini",
            calls=1_000,
            input_tokens=2_000,
            output_tokens=500,
        )
    ]
    async with session_scope(sessions) as session:
        charged = await estimate(session, system, items)
        fee_only = await estimate(session, own, items)
        unowned = await estimate(session, ownerless, items)
    # system: gpt-4o-mini at $0.15 input and $0.60 output per million, doubled by the markup.
    usd = (Decimal("0.15") * 2_000 + Decimal("0.60") * 500) / 1_000_000 * 1_000 * 2
    assert charged.estimated_credits == int(usd * 1_000) == 1_200
    assert (charged.balance, charged.covered, charged.shortfall) == (1_250, True, 0)
    # own: only the fee, on 2.5 million tokens in all.
    assert fee_only.estimated_credits == 1_250
    assert (fee_only.covered, fee_only.shortfall) == (True, 0)
    assert (unowned.balance, unowned.covered, unowned.user_id) == (None, None, None)

    async with session_scope(sessions) as session:
        short = await estimate(session, system, [items[0].model_copy(update={"calls": 1_100})])
        unknown = EstimateItem(provider="openai", model="gpt-0", calls=1)
        with pytest.raises(UnknownModel):
            await estimate(session, system, [unknown])
    assert (short.estimated_credits, short.covered, short.shortfall) == (1_320, False, 70)
    async with session_scope(sessions) as session:
        usage = await reports.experiment_usage(session, system, catalog=CATALOG)
    assert (usage.estimated_credits, usage.estimate_delta) == (1_320, -1_320)
