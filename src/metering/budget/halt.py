"""Halt flags: how the pipeline tells an experiment runner to stop, and how credits lift it.

Flags live in Redis (`redis_keys.halt_flag`), one per experiment, so a runner in any language
checks its own experiment with one GET or EXISTS. A user's flagged experiments are also kept in a
set (`redis_keys.halted_experiments`), so that lifting finds them all without a database query.

Invariant: once the writers of a user's balance are done, each of the user's unfinished
experiments is halted exactly when the user's committed balance is at or below the threshold.
Every writer that can move a balance across the threshold (a usage batch, a purchase, a
clawback) calls `sync_halts` after its commit. `sync_halts` re-reads the committed balance and
writes the flags while holding a per-user advisory lock in PostgreSQL, so the syncs of one user
run one after another and the last one reads, and writes, the latest state: a sync that read an
older balance has finished writing before a newer one reads. The flags need nothing of Redis but
single-key commands, so they work the same on a Redis Cluster.
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.types import Text

from metering.budget.alerts import BALANCE_FLOOR
from metering.ops import redis_keys
from metering.ops.db import run_in_transaction
from metering.ops.redis_client import AsyncRedis
from metering.usage import streams

FINISHED_STATUSES = ("completed", "failed", "cancelled")
"""Experiment statuses that no longer run: their halt flags are not raised."""
HALT_LOCK_CLASS = 0x68616C74  # "halt": the first key of the two-integer advisory lock space
"""Advisory locks on (HALT_LOCK_CLASS, hashtext(user id)): one per user. The two-integer key
space never meets the one-bigint keys the ledger and the Stripe handlers lock."""
LOCK_TIMEOUT_MS = 10_000
"""A sync waits this long for another sync of the same user, then fails and is retried."""

_LOCK_USER = text("SELECT pg_advisory_xact_lock(:lock_class, hashtext(:id))")
_BALANCES = text('SELECT id, credits FROM "User" WHERE id = ANY(:ids)').bindparams(
    bindparam("ids", type_=ARRAY(Text))
)
_UNFINISHED = text(
    'SELECT id, "userId" FROM "MAACExperiment" WHERE "userId" = ANY(:ids) '
    "AND status <> ALL(:finished)"
).bindparams(bindparam("ids", type_=ARRAY(Text)), bindparam("finished", type_=ARRAY(Text)))


@dataclass
class HaltChange:
    """What a sync changed: experiments newly halted, and experiments whose halt was lifted."""

    raised: list[str] = field(default_factory=list)
    lifted: list[str] = field(default_factory=list)


async def sync_halts(
    redis: AsyncRedis,
    sessions: async_sessionmaker[AsyncSession],
    prefix: str,
    user_ids: Iterable[str],
    threshold: int,
    also: Mapping[str, Iterable[str]] | None = None,
) -> HaltChange:
    """Make each user's halt flags match their committed balance: raised on every unfinished
    experiment (and on `also[user]`, the experiments just charged) when the balance is at or
    below `threshold` (or the hard floor, `alerts.BALANCE_FLOOR`, if that is higher), lifted
    otherwise. Call after the commit that changed the balance.

    One database transaction holding the users' advisory locks (taken in id order) around the
    balance read and the Redis writes. Idempotent; a failure leaves flags that a retry, or the
    user's next sync, corrects. Users that do not exist are left alone.
    """
    ids = sorted(set(user_ids))
    if not ids:
        return HaltChange()
    threshold = max(threshold, BALANCE_FLOOR)

    async def work(session: AsyncSession) -> HaltChange:
        await session.execute(text(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"))
        for user_id in ids:
            await session.execute(_LOCK_USER, {"lock_class": HALT_LOCK_CLASS, "id": user_id})
        balances = {row.id: row.credits for row in await session.execute(_BALANCES, {"ids": ids})}
        low = sorted(u for u, credits in balances.items() if credits <= threshold)
        running: dict[str, set[str]] = {u: set((also or {}).get(u, ())) for u in low}
        if low:
            rows = await session.execute(
                _UNFINISHED, {"ids": low, "finished": list(FINISHED_STATUSES)}
            )
            for row in rows:
                running[row.userId].add(row.id)
        change = HaltChange()
        for user_id in low:
            reason = f"balance {balances[user_id]} credits is at or below {threshold}"
            change.raised += await raise_halt(redis, prefix, user_id, running[user_id], reason)
        for user_id in sorted(set(balances) - set(low)):
            change.lifted += await clear_halt(redis, prefix, user_id)
        return change

    return await run_in_transaction(sessions, work)


async def raise_halt(
    redis: AsyncRedis, prefix: str, user_id: str, experiment_ids: Iterable[str], reason: str
) -> list[str]:
    """Set the halt flag of each experiment; returns the ids whose flag was not already set.

    The set of halted experiments is written first, in a round trip of its own: its keys and the
    flags' may live on different cluster nodes, and a flag that is set must always be findable
    by `clear_halt`.
    """
    experiment_ids = sorted(set(experiment_ids))
    if not experiment_ids:
        return []
    value = json.dumps({"userId": user_id, "reason": reason})
    await redis.sadd(redis_keys.halted_experiments(prefix, user_id), *experiment_ids)
    async with redis.pipeline(transaction=False) as pipe:
        for experiment_id in experiment_ids:
            pipe.set(redis_keys.halt_flag(prefix, experiment_id), value, nx=True)
        results: Sequence[object] = await pipe.execute()
    return [e for e, newly_set in zip(experiment_ids, results, strict=True) if newly_set]


async def clear_halt(redis: AsyncRedis, prefix: str, user_id: str) -> list[str]:
    """Lift the halt flags of all of a user's experiments; returns the ids that were halted.

    Only the members read are removed from the set, after their flags: a member added meanwhile
    stays, so its flag is never orphaned.
    """
    members_key = redis_keys.halted_experiments(prefix, user_id)
    members = sorted(streams.text(m) for m in await redis.smembers(members_key))
    if not members:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for experiment_id in members:
            pipe.delete(redis_keys.halt_flag(prefix, experiment_id))
        await pipe.execute()
    await redis.srem(members_key, *members)
    return members


async def is_halted(redis: AsyncRedis, prefix: str, experiment_id: str) -> bool:
    return bool(await redis.exists(redis_keys.halt_flag(prefix, experiment_id)))
