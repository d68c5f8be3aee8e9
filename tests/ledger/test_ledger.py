"""The ledger against a real PostgreSQL: sign rules, idempotency, concurrency, the usage carry."""

import asyncio
import random
from dataclasses import replace
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ledger import charging, journal
from metering.ledger.reconcile import Violation, find_violations
from metering.ops.db import create_engine, make_sessionmaker, run_in_transaction, session_scope
from metering.ops.models import (
    CreditTransaction,
    MAACExperiment,
    TransactionType,
    UnbilledUsage,
    UsageCall,
    User,
)
from tests.factories import CALL, create_experiment, create_user, unique

Sessions = async_sessionmaker[AsyncSession]


def posting(
    user_id: str,
    amount: int,
    type_: TransactionType = TransactionType.ADJUSTMENT,
    key: str | None = None,
) -> journal.Posting:
    return journal.Posting(
        user_id=user_id,
        type=type_,
        amount=amount,
        description="test",
        idempotency_key=key or unique("key"),
    )


async def new_user(sessions: Sessions, credits: int = 0) -> str:
    async with session_scope(sessions) as session:
        return await create_user(session, credits)


async def credits_of(sessions: Sessions, user_id: str) -> int:
    async with session_scope(sessions) as session:
        user = await session.get(User, user_id)
        assert user is not None
        return user.credits


async def assert_reconciled(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        assert await find_violations(session) == []


@pytest.mark.parametrize(
    ("type_", "amount"),
    [
        (TransactionType.PURCHASE, 0),
        (TransactionType.PURCHASE, -5),
        (TransactionType.REFUND, 0),
        (TransactionType.USAGE, 1),
        (TransactionType.ADJUSTMENT, 0),
        (TransactionType.ADJUSTMENT, 2**31),
        (TransactionType.USAGE, -(2**31) - 1),
    ],
)
async def test_sign_and_range_rules_reject_before_writing(
    sessions: Sessions, type_: TransactionType, amount: int
) -> None:
    user_id = await new_user(sessions, 100)
    with pytest.raises(journal.InvalidAmount):
        async with session_scope(sessions) as session:
            await journal.post(session, posting(user_id, amount, type_))
    assert await credits_of(sessions, user_id) == 100


@pytest.mark.parametrize(
    ("type_", "amount"),
    [
        (TransactionType.PURCHASE, 1),
        (TransactionType.REFUND, 7),
        (TransactionType.USAGE, 0),
        (TransactionType.USAGE, -3),
        (TransactionType.ADJUSTMENT, -4),
    ],
)
async def test_allowed_amounts_move_the_balance(
    sessions: Sessions, type_: TransactionType, amount: int
) -> None:
    user_id = await new_user(sessions, 100)
    async with session_scope(sessions) as session:
        posted = await journal.post(session, posting(user_id, amount, type_))
    assert posted.created
    assert await credits_of(sessions, user_id) == 100 + amount


async def test_floats_and_bools_are_not_amounts() -> None:
    with pytest.raises(journal.InvalidAmount, match="whole number"):
        journal.check_amount(TransactionType.PURCHASE, 1.0)  # type: ignore[arg-type]
    with pytest.raises(journal.InvalidAmount, match="whole number"):
        journal.check_amount(TransactionType.PURCHASE, True)


async def test_same_key_returns_first_result_and_changes_nothing(sessions: Sessions) -> None:
    user_id = await new_user(sessions)
    key = unique("purchase")
    async with session_scope(sessions) as session:
        first = await journal.post(session, posting(user_id, 500, TransactionType.PURCHASE, key))
    async with session_scope(sessions) as session:
        again = await journal.post(session, posting(user_id, 500, TransactionType.PURCHASE, key))
    assert first.created
    assert not again.created
    assert again.transaction_id == first.transaction_id
    assert (again.amount, again.idempotency_key) == (500, key)
    assert await credits_of(sessions, user_id) == 500


async def test_balance_overflow_is_rejected_and_rolled_back(sessions: Sessions) -> None:
    user_id = await new_user(sessions, 2**31 - 10)
    with pytest.raises(journal.BalanceOverflow):
        async with session_scope(sessions) as session:
            await journal.post(session, posting(user_id, 11, TransactionType.PURCHASE))
    async with session_scope(sessions) as session:
        rows = await session.scalar(
            select(func.count()).where(CreditTransaction.user_id == user_id)
        )
    assert rows == 1
    assert await credits_of(sessions, user_id) == 2**31 - 10


async def test_unknown_user_is_a_clear_error(sessions: Sessions) -> None:
    with pytest.raises(journal.UnknownUser, match="no user with id nobody"):
        async with session_scope(sessions) as session:
            await journal.post(session, posting("nobody", 5))


async def test_post_many_moves_each_user_once_and_dedupes_within_the_call(
    sessions: Sessions,
) -> None:
    alice, bob = await new_user(sessions, 10), await new_user(sessions, 10)
    shared_key = unique("key")
    async with session_scope(sessions) as session:
        results = await journal.post_many(
            session,
            [
                posting(alice, -3),
                posting(bob, 5, key=shared_key),
                posting(alice, -2),
                posting(bob, 5, key=shared_key),
            ],
        )
    assert [r.created for r in results] == [True, True, True, True]
    assert results[1] == results[3]
    assert await credits_of(sessions, alice) == 5
    assert await credits_of(sessions, bob) == 15


async def test_fifty_concurrent_debits_leave_the_exact_balance(sessions: Sessions) -> None:
    user_id = await new_user(sessions, 1_000)

    async def debit(n: int) -> None:
        async def work(session: AsyncSession) -> None:
            await journal.post(session, posting(user_id, -(n + 1), TransactionType.USAGE))

        await run_in_transaction(sessions, work)

    await asyncio.gather(*(debit(n) for n in range(50)))
    assert await credits_of(sessions, user_id) == 1_000 - sum(range(1, 51))
    await assert_reconciled(sessions)


async def test_concurrent_batches_over_overlapping_users_do_not_deadlock(
    sessions: Sessions,
) -> None:
    users = [await new_user(sessions, 100) for _ in range(6)]
    rng = random.Random(7)

    async def batch() -> None:
        chosen = rng.sample(users, 4)

        async def work(session: AsyncSession) -> None:
            await journal.post_many(
                session, [posting(u, -1, TransactionType.USAGE) for u in chosen]
            )

        # attempts=1: a deadlock would surface as an error instead of being retried away.
        await run_in_transaction(sessions, work, attempts=1)

    await asyncio.gather(*(batch() for _ in range(40)))
    assert sum([await credits_of(sessions, u) for u in users]) == 600 - 160
    await assert_reconciled(sessions)


def usage(experiment_id: str, exact: str, event_id: str | None = None) -> charging.UsageCharge:
    return charging.UsageCharge(
        event_id=event_id or unique("evt"),
        experiment_id=experiment_id,
        exact_credits=Decimal(exact),
        call=CALL,
    )


async def experiment_state(sessions: Sessions, experiment_id: str) -> tuple[int, Decimal]:
    async with session_scope(sessions) as session:
        experiment = await session.get(MAACExperiment, experiment_id)
        assert experiment is not None
        return experiment.credits_used, experiment.exact_credits_used


async def test_a_batch_writes_one_usage_row_per_experiment_model_and_tier(
    sessions: Sessions,
) -> None:
    """Calls are summed: one USAGE row per experiment, provider, model and tier of a batch, whose
    metadata keeps the platform's keys (token counts summed) beside the calls and exact cost;
    each call keeps its own record."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100)
        experiment_id = await create_experiment(session, user_id)
    other_model = replace(CALL, model="gpt-4o", input_tokens=10, output_tokens=1)
    batch = [usage(experiment_id, "0.4") for _ in range(3)]
    batch.append(replace(usage(experiment_id, "0.5"), call=other_model))
    async with session_scope(sessions) as session:
        outcome = await charging.charge_usage(session, batch)
    assert sorted(outcome.charged) == sorted(c.event_id for c in batch)
    async with session_scope(sessions) as session:
        rows = (
            await session.scalars(
                select(CreditTransaction)
                .where(CreditTransaction.experiment_id == experiment_id)
                .where(CreditTransaction.type == TransactionType.USAGE)
            )
        ).all()
        calls = await session.scalar(
            select(func.count())
            .select_from(UsageCall)
            .where(UsageCall.experiment_id == experiment_id)
        )
    by_model = {row.metadata_["model"]: row for row in rows}
    assert sorted(by_model) == ["gpt-4o", "gpt-4o-mini"]
    mini = by_model["gpt-4o-mini"]
    assert {k: mini.metadata_[k] for k in ("experimentId", "tier", "provider", "calls")} == {
        "experimentId": experiment_id,
        "tier": "standard",
        "provider": "openai",
        "calls": 3,
    }
    assert (mini.metadata_["inputTokens"], mini.metadata_["outputTokens"]) == (3000, 600)
    assert Decimal(mini.metadata_["exactCredits"]) == Decimal("1.2")
    first = min(c.event_id for c in batch[:3])
    assert mini.idempotency_key == f"usage:{first}"
    assert sum(row.amount for row in rows) == -2  # ceil(1.7)
    assert calls == 4
    await assert_reconciled(sessions)


async def test_usage_carry_charges_the_ceiling_of_the_exact_total(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100)
        experiment_id = await create_experiment(session, user_id)
    charges = [usage(experiment_id, "0.3") for _ in range(7)]
    async with session_scope(sessions) as session:
        outcome = await charging.charge_usage(session, charges[:4])
    assert [outcome.amounts[c.event_id] for c in charges[:4]] == [-1, 0, 0, -1]
    async with session_scope(sessions) as session:
        outcome = await charging.charge_usage(session, charges[4:])
    assert [outcome.amounts[c.event_id] for c in charges[4:]] == [0, 0, -1]
    assert outcome.balances == {user_id: 97}
    assert await experiment_state(sessions, experiment_id) == (3, Decimal("2.1"))
    await assert_reconciled(sessions)


async def test_duplicate_events_are_skipped_by_the_database(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100)
        experiment_id = await create_experiment(session, user_id)
    first = [usage(experiment_id, "1.5"), usage(experiment_id, "1.5")]
    async with session_scope(sessions) as session:
        await charging.charge_usage(session, first)
    replay = [first[1], usage(experiment_id, "0.5"), first[0], first[1]]
    async with session_scope(sessions) as session:
        outcome = await charging.charge_usage(session, replay)
    assert outcome.charged == [replay[1].event_id]
    assert outcome.duplicates == [first[1].event_id, first[0].event_id, first[1].event_id]
    assert await experiment_state(sessions, experiment_id) == (4, Decimal("3.5"))
    assert await credits_of(sessions, user_id) == 96
    await assert_reconciled(sessions)


async def test_usage_of_an_experiment_without_user_charges_nobody(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        experiment_id = await create_experiment(session, None)
    charge = usage(experiment_id, "2.2")
    for _ in range(2):
        async with session_scope(sessions) as session:
            outcome = await charging.charge_usage(session, [charge])
    assert outcome.duplicates == [charge.event_id]
    assert await experiment_state(sessions, experiment_id) == (3, Decimal("2.2"))
    async with session_scope(sessions) as session:
        unbilled = await session.get(UnbilledUsage, charge.event_id)
    assert unbilled is not None
    assert unbilled.amount == -3
    await assert_reconciled(sessions)


async def test_an_unbilled_event_is_not_charged_once_a_user_is_set(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 50)
        experiment_id = await create_experiment(session, None)
    charge = usage(experiment_id, "4")
    async with session_scope(sessions) as session:
        await charging.charge_usage(session, [charge])
    async with session_scope(sessions) as session:
        experiment = await session.get(MAACExperiment, experiment_id)
        assert experiment is not None
        experiment.user_id = user_id
    async with session_scope(sessions) as session:
        outcome = await charging.charge_usage(session, [charge])
    assert outcome.duplicates == [charge.event_id]
    assert await credits_of(sessions, user_id) == 50
    await assert_reconciled(sessions)


async def test_unknown_experiments_are_returned_not_recorded(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 10)
        experiment_id = await create_experiment(session, user_id)
    known, unknown = usage(experiment_id, "1"), usage("exp-missing", "1")
    async with session_scope(sessions) as session:
        outcome = await charging.charge_usage(session, [unknown, known])
    assert outcome.unknown_experiments == [unknown.event_id]
    assert outcome.charged == [known.event_id]
    assert await credits_of(sessions, user_id) == 9


async def test_usage_may_take_a_balance_below_zero(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1)
        experiment_id = await create_experiment(session, user_id)
    async with session_scope(sessions) as session:
        outcome = await charging.charge_usage(session, [usage(experiment_id, "5.01")])
    assert outcome.balances == {user_id: -5}
    await assert_reconciled(sessions)


async def test_concurrent_usage_batches_on_one_experiment_charge_exactly_once(
    sessions: Sessions,
) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_000)
        experiment_id = await create_experiment(session, user_id)
    charges = [usage(experiment_id, "0.25") for _ in range(40)]

    async def deliver(batch: list[charging.UsageCharge]) -> None:
        async def work(session: AsyncSession) -> None:
            await charging.charge_usage(session, batch)

        await run_in_transaction(sessions, work)

    # Every event is delivered three times, in overlapping batches, concurrently.
    batches = [charges[i : i + 10] for i in range(0, 40, 5)] + [charges[::-1]]
    await asyncio.gather(*(deliver(b) for b in batches))
    assert await experiment_state(sessions, experiment_id) == (10, Decimal("10"))
    assert await credits_of(sessions, user_id) == 990
    await assert_reconciled(sessions)


async def test_reconcile_reports_every_kind_of_violation(migrated_database: str) -> None:
    engine = create_engine(migrated_database, pool_size=1)
    sessions = make_sessionmaker(engine)
    try:
        async with session_scope(sessions) as session:
            user_id = await create_user(session, 100)
            experiment_id = await create_experiment(session, user_id)
            await charging.charge_usage(session, [usage(experiment_id, "2.5", "evt-twice")])
        assert await _violations(sessions) == []
        async with session_scope(sessions) as session:
            await session.execute(
                text('UPDATE "User" SET credits = credits + 1 WHERE id = :id'), {"id": user_id}
            )
            await session.execute(
                text('UPDATE "MAACExperiment" SET "exactCreditsUsed" = 1 WHERE id = :id'),
                {"id": experiment_id},
            )
            await session.execute(
                text(
                    'INSERT INTO "CreditTransaction" (id, "userId", type, amount, description) '
                    "VALUES ('tx-bad', :user, 'PURCHASE', 0, 'zero purchase')"
                ),
                {"user": user_id},
            )
            await session.execute(
                text(
                    'INSERT INTO "UnbilledUsage" ("eventId", "experimentId", amount) '
                    "VALUES ('evt-twice', :experiment, 0)"
                ),
                {"experiment": experiment_id},
            )
        found = {(v.kind, v.subject_id): v.detail for v in await _violations(sessions)}
        assert found == {
            (
                "user",
                user_id,
            ): f"credits = 98 but its transactions sum to 97 ({user_id}@example.com)",
            (
                "experiment",
                experiment_id,
            ): "creditsUsed = 3 but its exact cost 1.000000000000000000 rounds up to 1",
            ("transaction", "tx-bad"): "PURCHASE amount 0 has the wrong sign for its type",
            ("event", "evt-twice"): "recorded both as a USAGE row and as unbilled usage",
            (
                "calls",
                experiment_id,
            ): "its call records count 1 calls, 1000 input and 200 output tokens, its usage "
            "rows 2 calls, 1000 input and 200 output tokens",
        }
    finally:
        await engine.dispose()


async def _violations(sessions: Sessions) -> list[Violation]:
    async with session_scope(sessions) as session:
        return await find_violations(session)
