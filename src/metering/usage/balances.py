"""After a batch commits: its users' halt flags and low-balance alerts."""

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering import halt, keys, ledger
from metering.alerts import (
    BALANCE_FLOOR,
    LowBalanceAlert,
    UnchargedUsage,
    note_balances,
    note_uncharged,
)
from metering.redis_client import AsyncRedis


async def sync_halts(
    redis: AsyncRedis,
    sessions: async_sessionmaker[AsyncSession],
    prefix: str,
    halt_threshold: int,
    outcome: ledger.UsageOutcome,
) -> list[str]:
    """Bring the halt flags of the batch's users in line with their committed balances
    (`halt.sync_halts`): users at or below the threshold, and users with halted experiments
    (whose balance some other writer may have raised). Returns the experiments newly halted."""
    users = sorted(outcome.balances)
    if not users:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for user_id in users:
            pipe.exists(keys.halted_experiments(prefix, user_id))
        flagged = await pipe.execute()
    due = [
        user_id
        for user_id, has_halts in zip(users, flagged, strict=True)
        if has_halts or outcome.balances[user_id] <= max(halt_threshold, BALANCE_FLOOR)
    ]
    if not due:
        return []
    charged = {u: {e for e, owner in outcome.owners.items() if owner == u} for u in due}
    change = await halt.sync_halts(redis, sessions, prefix, due, halt_threshold, charged)
    return change.raised


async def alert(
    redis: AsyncRedis,
    prefix: str,
    low_balance_credits: int,
    outcome: ledger.UsageOutcome,
    uncharged: Sequence[UnchargedUsage],
) -> list[LowBalanceAlert]:
    """Publish the batch's new low-balance alerts and count its uncharged usage; returns the
    new alerts."""
    alerts = await note_balances(redis, prefix, outcome.balances, low_balance_credits)
    await note_uncharged(redis, prefix, uncharged)
    return alerts
