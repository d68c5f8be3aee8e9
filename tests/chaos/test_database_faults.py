"""Faults of PostgreSQL: a worker's backends terminated mid-transaction on the shared server, and a
private cluster restarted while events flow."""

import asyncio
import random
from collections.abc import Iterator

import asyncpg
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.ops import migrate, redis_keys
from metering.ops.db import create_engine, make_sessionmaker
from tests.chaos.helpers import (
    WORKER_ENV,
    Books,
    dead_letters_of,
    publish,
    row_locked,
    settled,
    waiting_on_a_lock,
)
from tests.chaos.services import PrivatePostgres, private_postgres, running_beat
from tests.support import eventually
from tests.usage.helpers import Sessions
from tests.workers import running_worker

pytestmark = pytest.mark.slow

TERMINATE = text("SELECT pg_terminate_backend(:pid)")
IN_TRANSACTION = text(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND xact_start IS NOT NULL AND pid <> pg_backend_pid() AND pid <> ALL(:spared)"
)


async def test_backends_terminated_mid_transaction_lose_and_double_nothing(
    beat: None, redis: Redis, engine: AsyncEngine, sessions: Sessions, redis_prefix: str
) -> None:
    rng = random.Random(11)
    books = await Books.open(sessions, users=3, experiments_per_user=2)
    terminated = 0
    with running_worker("usage", env=WORKER_ENV) as survivor:
        # A batch blocked on a row lock is surely mid-transaction: terminate its backend, thrice
        # (the retry reconnects and blocks again), then let it through.
        async with row_locked(engine, books.users[0]) as holder:
            holder_pid = await holder.scalar(text("SELECT pg_backend_pid()"))
            await publish(redis, redis_prefix, books.events(100, rng))
            for _ in range(3):
                await eventually(lambda: _blocked(engine), "a batch blocked on the lock")
                for pid in await waiting_on_a_lock(engine):
                    terminated += await _terminate(engine, pid)
        # And backends caught in any open transaction while events flow.
        for _ in range(6):
            await publish(redis, redis_prefix, books.events(150, rng))
            terminated += await _terminate_one_in_transaction(engine, spared=[holder_pid])
        await eventually(lambda: books.all_charged(sessions), "every event charged")
        await eventually(lambda: settled(redis, redis_keys.usage_stream(redis_prefix)), "all acked")
        assert survivor.process.poll() is None
    assert terminated >= 3
    await books.assert_exact(sessions)
    assert await dead_letters_of(redis, redis_prefix, books) == []


async def _terminate(engine: AsyncEngine, pid: int) -> int:
    async with engine.connect() as connection:
        return int(bool(await connection.scalar(TERMINATE, {"pid": pid})))


async def _terminate_one_in_transaction(engine: AsyncEngine, spared: list[int]) -> int:
    """Terminate the first worker backend seen inside a transaction (polling for up to ~1 s)."""
    async with engine.connect() as connection:
        for _ in range(200):
            pids = (await connection.execute(IN_TRANSACTION, {"spared": spared})).scalars().all()
            await connection.rollback()
            if pids:
                return int(bool(await connection.scalar(TERMINATE, {"pid": pids[0]})))
            await asyncio.sleep(0.005)
    return 0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    with private_postgres() as postgres:
        yield postgres


async def test_a_private_postgres_restarted_while_events_flow_loses_and_doubles_nothing(
    cluster: PrivatePostgres,
    redis: Redis,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    await _create_database(cluster, "metering")
    url = cluster.database_url("metering")
    await migrate.upgrade_async(url)
    engine = create_engine(url)
    sessions = make_sessionmaker(engine)
    prefix = f"{redis_prefix}-restarted"
    env = {**WORKER_ENV, "DATABASE_URL": url, "METERING_REDIS_PREFIX": prefix}
    rng = random.Random(12)
    try:
        books = await Books.open(sessions, users=3, experiments_per_user=2)
        with (
            running_beat(env, tmp_path_factory.mktemp("beat")),
            running_worker("usage", env=env),
        ):
            for round_ in range(10):
                await publish(redis, prefix, books.events(150, rng))
                if round_ in (3, 7):
                    await asyncio.to_thread(cluster.restart)
                await asyncio.sleep(0.2)
            await eventually(lambda: books.all_charged(sessions), "every event charged")
            await eventually(lambda: settled(redis, redis_keys.usage_stream(prefix)), "all acked")
        await books.assert_exact(sessions)
        assert await dead_letters_of(redis, prefix, books) == []
    finally:
        await engine.dispose()


async def _create_database(cluster: PrivatePostgres, name: str) -> None:
    connection = await asyncpg.connect(cluster.database_url("postgres"))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def _blocked(engine: AsyncEngine) -> bool:
    return bool(await waiting_on_a_lock(engine))
