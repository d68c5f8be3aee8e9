"""Usage draws from grants first, in their order, and never changes an amount."""

import asyncio

from sqlalchemy import select

from metering.ops.db import session_scope
from metering.ops.models import CreditTransaction, GrantDraw
from tests.factories import create_experiment
from tests.grants.helpers import (
    Sessions,
    assert_reconciled,
    charge,
    credits_of,
    drawn,
    give,
    grant,
    user_with_experiment,
)


async def draws_of(sessions: Sessions, transaction_id: str) -> dict[str, int]:
    async with session_scope(sessions) as session:
        rows = await session.execute(
            select(GrantDraw.grant_id, GrantDraw.amount).where(
                GrantDraw.transaction_id == transaction_id
            )
        )
        return {row.grant_id: row.amount for row in rows}


async def test_usage_spanning_a_grant_and_purchased_credits(sessions: Sessions) -> None:
    user_id, experiment_id = await user_with_experiment(sessions, purchased=1_000)
    grant_id = await give(sessions, user_id, 100)
    assert await credits_of(sessions, user_id) == 1_100

    row_id = await charge(sessions, experiment_id, 130)

    assert await draws_of(sessions, row_id) == {grant_id: 100}
    assert (await grant(sessions, grant_id)).remaining == 0
    assert await credits_of(sessions, user_id) == 970  # 1,000 purchased - 30
    async with session_scope(sessions) as session:
        usage = await session.get(CreditTransaction, row_id)
        assert usage is not None
        assert usage.amount == -130
    await assert_reconciled(sessions)


async def test_usage_within_a_grant_leaves_purchased_credits_whole(sessions: Sessions) -> None:
    user_id, experiment_id = await user_with_experiment(sessions, purchased=500)
    grant_id = await give(sessions, user_id, 100)

    first = await charge(sessions, experiment_id, 30)
    second = await charge(sessions, experiment_id, 45)

    assert await draws_of(sessions, first) == {grant_id: 30}
    assert await draws_of(sessions, second) == {grant_id: 45}
    assert (await grant(sessions, grant_id)).remaining == 25
    assert await credits_of(sessions, user_id) == 525
    await assert_reconciled(sessions)


async def test_higher_priority_first_then_the_earliest_expiry(sessions: Sessions) -> None:
    user_id, experiment_id = await user_with_experiment(sessions)
    late_low = await give(sessions, user_id, 50, days=60)
    soon_low = await give(sessions, user_id, 50, days=10)
    late_high = await give(sessions, user_id, 50, days=90, priority=5)

    row_id = await charge(sessions, experiment_id, 120)

    assert await draws_of(sessions, row_id) == {late_high: 50, soon_low: 50, late_low: 20}
    assert [(await grant(sessions, g)).remaining for g in (late_high, soon_low, late_low)] == [
        0,
        0,
        30,
    ]
    assert await drawn(sessions, late_low) == 20
    assert await credits_of(sessions, user_id) == 30
    await assert_reconciled(sessions)


async def test_usage_beyond_grants_and_balance_goes_negative(sessions: Sessions) -> None:
    user_id, experiment_id = await user_with_experiment(sessions)
    grant_id = await give(sessions, user_id, 40)

    row_id = await charge(sessions, experiment_id, 100)

    assert await draws_of(sessions, row_id) == {grant_id: 40}
    assert await credits_of(sessions, user_id) == -60
    await assert_reconciled(sessions)


async def test_a_user_without_grants_draws_nothing(sessions: Sessions) -> None:
    user_id, experiment_id = await user_with_experiment(sessions, purchased=100)
    row_id = await charge(sessions, experiment_id, 10)
    assert await draws_of(sessions, row_id) == {}
    assert await credits_of(sessions, user_id) == 90


async def test_concurrent_batches_of_one_user_never_draw_a_grant_twice(sessions: Sessions) -> None:
    user_id, _ = await user_with_experiment(sessions, purchased=1_000)
    async with session_scope(sessions) as session:
        experiments = [await create_experiment(session, user_id) for _ in range(8)]
    grant_id = await give(sessions, user_id, 100)

    await asyncio.gather(*(charge(sessions, e, 15) for e in experiments))

    assert await drawn(sessions, grant_id) == 100
    assert (await grant(sessions, grant_id)).remaining == 0
    assert await credits_of(sessions, user_id) == 1_100 - 8 * 15
    await assert_reconciled(sessions)
