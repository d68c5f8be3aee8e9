"""After a batch commits: its users' halt flags and low-balance alerts."""

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.budget import halt
from metering.budget.alerts import (
    BALANCE_FLOOR,
    LowBalanceAlert,
    UnchargedUsage,
    note_balances,
    note_uncharged,
)
from metering.ledger import charging
from metering.ops import redis_keys as keys
from metering.ops.models import User
from metering.ops.redis_client import AsyncRedis


async def sync_halts(
    redis: AsyncRedis,
    sessions: async_sessionmaker[AsyncSession],
    prefix: str,
    halt_threshold: int,
    outcome: charging.UsageOutcome,
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
    sessions: async_sessionmaker[AsyncSession],
    prefix: str,
    low_balance_credits: int,
    outcome: charging.UsageOutcome,
    uncharged: Sequence[UnchargedUsage],
) -> list[LowBalanceAlert]:
    """Publish the batch's new low-balance alerts and count its uncharged usage; returns the
    new alerts.

    A balance the batch saw above a threshold is read again as committed now: another drain may
    have committed a lower one since, and the stale one would re-arm an alert just sent."""
    seen = dict(outcome.balances)
    above = sorted(u for u, c in seen.items() if c > min(low_balance_credits, BALANCE_FLOOR))
    if above:
        async with sessions() as session:
            rows = await session.execute(select(User.id, User.credits).where(User.id.in_(above)))
            seen.update({user_id: credits for user_id, credits in rows})
    alerts = await note_balances(redis, prefix, seen, low_balance_credits)
    await note_uncharged(redis, prefix, uncharged)
    return alerts
