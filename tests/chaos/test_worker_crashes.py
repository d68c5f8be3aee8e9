"""A usage worker SIGKILLed ten times in the middle of a batch, restarted each time."""

import random

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.ops import redis_keys
from tests.chaos.helpers import (
    WORKER_ENV,
    Books,
    dead_letters_of,
    publish,
    row_locked,
    settled,
    waiting_on_a_lock,
)
from tests.support import eventually
from tests.usage.helpers import Sessions
from tests.workers import running_worker

pytestmark = pytest.mark.slow

KILLS = 10


async def test_ten_sigkills_mid_batch_lose_and_double_nothing(
    beat: None, redis: Redis, engine: AsyncEngine, sessions: Sessions, redis_prefix: str
) -> None:
    rng = random.Random(7)
    books = await Books.open(sessions, users=4, experiments_per_user=2)
    for _ in range(KILLS):
        with running_worker("usage", env=WORKER_ENV) as worker:
            # Progress first (this also reclaims what the previous kill left pending)...
            before = await books.calls_recorded(sessions)
            await publish(redis, redis_prefix, books.events(150, rng))

            async def progressed(before: int = before) -> bool:
                return await books.calls_recorded(sessions) > before

            await eventually(progressed, "progress after a restart")
            # ...then a batch held open on a row lock, and the worker killed inside it.
            async with row_locked(engine, rng.choice(books.users)):
                await publish(redis, redis_prefix, books.events(100, rng))
                await eventually(lambda: _blocked(engine), "a batch blocked inside its transaction")
                worker.kill()
    assert await books.calls_recorded(sessions) < len(books.event_ids())

    with running_worker("usage", concurrency=2, env=WORKER_ENV):
        await eventually(lambda: books.all_charged(sessions), "every event charged")
        await eventually(lambda: settled(redis, redis_keys.usage_stream(redis_prefix)), "all acked")
    await books.assert_exact(sessions)
    assert await dead_letters_of(redis, redis_prefix, books) == []


async def _blocked(engine: AsyncEngine) -> bool:
    return bool(await waiting_on_a_lock(engine))
