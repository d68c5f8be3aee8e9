"""At expiry what is left of a grant, and only that, is removed by one ADJUSTMENT, once."""

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from decimal import Decimal
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.grants.expire import expire_all_due
from metering.ledger import charging, journal
from metering.ops.db import session_scope
from metering.ops.models import TransactionType
from tests.factories import CALL, unique
from tests.grants.helpers import (
    Sessions,
    assert_reconciled,
    charge,
    credits_of,
    drawn,
    expiry_rows,
    give,
    grant,
    make_due,
    user_with_experiment,
)
from tests.support import wait_until_blocked_on_a_lock

T = TypeVar("T")


async def started(work: Awaitable[T]) -> "asyncio.Task[T]":
    task = asyncio.ensure_future(work)
    await asyncio.sleep(0)
    return task


async def test_an_unused_grant_expires_whole_and_once(sessions: Sessions) -> None:
    user_id, _ = await user_with_experiment(sessions, purchased=300)
    grant_id = await give(sessions, user_id, 100)
    await expire_all_due(sessions)
    assert await expiry_rows(sessions, grant_id) == []  # not due yet

    await make_due(sessions, grant_id)
    expired = await expire_all_due(sessions)
    assert [(e.grant_id, e.credits) for e in expired if e.user_id == user_id] == [(grant_id, 100)]
    assert await expire_all_due(sessions) == []

    assert await expiry_rows(sessions, grant_id) == [-100]
    after = await grant(sessions, grant_id)
    assert after.remaining == 0
    assert after.expired_at is not None
    assert await credits_of(sessions, user_id) == 300
    await assert_reconciled(sessions)


async def test_only_what_is_left_expires(sessions: Sessions) -> None:
    user_id, experiment_id = await user_with_experiment(sessions, purchased=300)
    grant_id = await give(sessions, user_id, 100)
    await charge(sessions, experiment_id, 30)
    await make_due(sessions, grant_id)

    await expire_all_due(sessions)

    assert await expiry_rows(sessions, grant_id) == [-70]
    assert await credits_of(sessions, user_id) == 300  # the 30 came from the grant
    await assert_reconciled(sessions)


async def test_a_grant_used_up_expires_without_an_adjustment(sessions: Sessions) -> None:
    user_id, experiment_id = await user_with_experiment(sessions, purchased=300)
    grant_id = await give(sessions, user_id, 50)
    await charge(sessions, experiment_id, 80)
    await make_due(sessions, grant_id)

    await expire_all_due(sessions)

    assert await expiry_rows(sessions, grant_id) == []
    assert (await grant(sessions, grant_id)).expired_at is not None
    assert await credits_of(sessions, user_id) == 270
    await assert_reconciled(sessions)


async def test_an_expired_grant_draws_nothing(sessions: Sessions) -> None:
    user_id, experiment_id = await user_with_experiment(sessions, purchased=300)
    grant_id = await give(sessions, user_id, 100)
    await make_due(sessions, grant_id)
    await charge(sessions, experiment_id, 30)  # due, not yet expired by beat: draws nothing
    await expire_all_due(sessions)
    await charge(sessions, experiment_id, 20)

    assert await drawn(sessions, grant_id) == 0
    assert await expiry_rows(sessions, grant_id) == [-100]
    assert await credits_of(sessions, user_id) == 250
    await assert_reconciled(sessions)


async def test_two_expiry_runs_at_once_post_one_adjustment(sessions: Sessions) -> None:
    user_id, _ = await user_with_experiment(sessions, purchased=10)
    grant_id = await give(sessions, user_id, 100)
    await make_due(sessions, grant_id)
    async with sessions() as holder, holder.begin():
        # Both runs find the grant due, then queue for the user's balance behind this lock.
        await holder.execute(
            text('SELECT 1 FROM "User" WHERE id = :id FOR NO KEY UPDATE'), {"id": user_id}
        )
        runs = [await started(expire_all_due(sessions)) for _ in range(2)]
        await wait_until_blocked_on_a_lock(sessions, backends=2)
    results = await asyncio.gather(*runs)

    ours = [e for result in results for e in result if e.grant_id == grant_id]
    assert [e.credits for e in ours] == [100]
    assert await expiry_rows(sessions, grant_id) == [-100]
    assert await credits_of(sessions, user_id) == 10
    await assert_reconciled(sessions)


async def grant_expiring_during_a_batch(
    sessions: Sessions, batch: AsyncSession
) -> tuple[str, str, charging.UsageCharge]:
    """A user with 1,000 purchased credits and a grant of 100 that expires a millisecond after
    `batch`'s transaction began: by the time the batch charges, the wall clock is past the
    expiry, the batch's time is not. The user, the grant and a call of 30 credits to charge."""
    user_id, experiment_id = await user_with_experiment(sessions, purchased=1_000)
    grant_id = await give(sessions, user_id, 100)
    started_at = await batch.scalar(text("SELECT now()"))
    assert started_at is not None
    await make_due(sessions, grant_id, at=started_at + timedelta(milliseconds=1))
    return user_id, grant_id, charging.UsageCharge(unique("evt"), experiment_id, Decimal(30), CALL)


async def test_a_batch_that_started_before_the_expiry_draws_and_the_expiry_takes_the_rest(
    sessions: Sessions,
) -> None:
    async with sessions() as batch, batch.begin():
        user_id, grant_id, usage = await grant_expiring_during_a_batch(sessions, batch)
        await charging.charge_usage(batch, [usage])
        expiry = await started(expire_all_due(sessions))
        await wait_until_blocked_on_a_lock(sessions)  # on the batch's balance lock
    await expiry

    assert await drawn(sessions, grant_id) == 30
    assert await expiry_rows(sessions, grant_id) == [-70]
    assert await credits_of(sessions, user_id) == 1_000
    await assert_reconciled(sessions)


async def test_a_batch_after_the_expiry_was_posted_draws_nothing(sessions: Sessions) -> None:
    async with sessions() as batch, batch.begin():
        user_id, grant_id, usage = await grant_expiring_during_a_batch(sessions, batch)
        await expire_all_due(sessions)  # posted before the batch locks the user
        await charging.charge_usage(batch, [usage])

    assert await drawn(sessions, grant_id) == 0
    assert await expiry_rows(sessions, grant_id) == [-100]
    assert await credits_of(sessions, user_id) == 970
    await assert_reconciled(sessions)


async def test_refunds_and_clawbacks_never_touch_a_grant(sessions: Sessions) -> None:
    user_id, experiment_id = await user_with_experiment(sessions, purchased=500)
    grant_id = await give(sessions, user_id, 100)
    async with session_scope(sessions) as session:
        await journal.post_many(
            session,
            [
                journal.Posting(
                    user_id,
                    TransactionType.ADJUSTMENT,
                    -500,
                    "Clawback of refund re_1",
                    unique("re"),
                    stripe_payment_id=unique("pi"),
                ),
                journal.Posting(
                    user_id,
                    TransactionType.REFUND,
                    20,
                    "Refund for experiment",
                    unique("refund"),
                    experiment_id=experiment_id,
                ),
            ],
        )
    assert (await grant(sessions, grant_id)).remaining == 100
    await charge(sessions, experiment_id, 50)
    await make_due(sessions, grant_id)
    await expire_all_due(sessions)

    assert await drawn(sessions, grant_id) == 50
    assert await expiry_rows(sessions, grant_id) == [-50]
    assert await credits_of(sessions, user_id) == 500 + 100 - 500 + 20 - 50 - 50
    await assert_reconciled(sessions)
