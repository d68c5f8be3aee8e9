"""One retry policy for transactions: deadlocks, lost connections and `RerunTransaction`."""

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.errors import TransientError
from metering.ops.db import RerunTransaction, run_in_transaction, session_scope
from metering.ops.models import User
from tests.factories import create_user


async def test_a_rerun_runs_the_whole_transaction_again_and_keeps_only_the_last(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session)
    runs = 0

    async def work(session: AsyncSession) -> int:
        nonlocal runs
        runs += 1
        await session.execute(
            text("""UPDATE "User" SET name = coalesce(name, '') || 'x' WHERE id = :id"""),
            {"id": user_id},
        )
        if runs < 3:
            raise RerunTransaction("read changed before it was locked")
        return runs

    assert await run_in_transaction(sessions, work) == 3
    async with sessions() as session:
        name = await session.scalar(select(User.name).where(User.id == user_id))
    assert name == "x"  # the two attempts run again were rolled back


async def test_reruns_stop_after_the_attempts_with_a_transient_error(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    runs = 0

    async def work(session: AsyncSession) -> None:
        nonlocal runs
        runs += 1
        raise RerunTransaction("never settles")

    with pytest.raises(TransientError, match="failed 2 times"):
        await run_in_transaction(sessions, work, attempts=2)
    assert runs == 2
