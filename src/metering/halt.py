"""Halt flags: how the pipeline tells an experiment runner to stop, and how a purchase lifts it.

Flags live in Redis (`keys.halt_flag`), one per experiment, so a runner in any language checks its
own experiment with one GET. A user's flagged experiments are also kept in a set, so that a
purchase clears them all without a database query.
"""

import json
from collections.abc import Iterable

from metering import keys
from metering.redis_client import AsyncRedis


async def raise_halt(
    redis: AsyncRedis, prefix: str, user_id: str, experiment_ids: Iterable[str], reason: str
) -> list[str]:
    """Set the halt flag of each experiment; returns the ids whose flag was not already set."""
    experiment_ids = sorted(set(experiment_ids))
    if not experiment_ids:
        return []
    value = json.dumps({"userId": user_id, "reason": reason})
    async with redis.pipeline(transaction=False) as pipe:
        for experiment_id in experiment_ids:
            pipe.set(keys.halt_flag(prefix, experiment_id), value, nx=True)
        pipe.sadd(keys.halted_experiments(prefix, user_id), *experiment_ids)
        results = await pipe.execute()
    return [e for e, newly_set in zip(experiment_ids, results, strict=False) if newly_set]


async def clear_halt(redis: AsyncRedis, prefix: str, user_id: str) -> list[str]:
    """Lift the halt flags of all of a user's experiments; returns the ids that were halted."""
    members_key = keys.halted_experiments(prefix, user_id)
    members = sorted(
        m.decode() if isinstance(m, bytes) else m for m in await redis.smembers(members_key)
    )
    if members:
        # One key per DEL: the flags and the set may live in different cluster slots.
        async with redis.pipeline(transaction=False) as pipe:
            for experiment_id in members:
                pipe.delete(keys.halt_flag(prefix, experiment_id))
            pipe.delete(members_key)
            await pipe.execute()
    return members


async def is_halted(redis: AsyncRedis, prefix: str, experiment_id: str) -> bool:
    return bool(await redis.exists(keys.halt_flag(prefix, experiment_id)))
