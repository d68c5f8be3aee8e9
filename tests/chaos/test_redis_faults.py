"""Faults of Redis, on a private server with AOF (`appendfsync everysec`) that carries both the
usage stream and the Celery broker: a worker killed between its commit and its XACK, every client
connection dropped, and the server restarted cleanly or killed while events flow."""

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.ops import redis_keys
from metering.ops.models import UsageCall
from tests.chaos.helpers import (
    WORKER_ENV,
    Books,
    dead_letters_of,
    publish,
    row_locked,
    settled,
    waiting_on_a_lock,
)
from tests.chaos.services import PrivateRedis, private_redis, running_beat
from tests.support import eventually
from tests.usage.helpers import Sessions
from tests.workers import Worker, running_worker

pytestmark = pytest.mark.slow

FSYNC_WINDOW_S = 2.0
"""With `appendfsync everysec` Redis fsyncs the AOF each second, and delays writes when an fsync
runs late, so a crash loses at most about two seconds of acknowledged writes."""


@dataclass
class Stack:
    server: PrivateRedis
    env: dict[str, str]


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private Redis, and beat sending drains and reclaims through it."""
    with private_redis() as server:
        env = {**WORKER_ENV, "REDIS_URL": server.url}
        with running_beat(env, tmp_path_factory.mktemp("beat")):
            yield Stack(server, env)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[Redis]:
    redis = Redis.from_url(stack.server.url)
    yield redis
    await redis.aclose()


def worker(stack: Stack) -> AbstractContextManager[Worker]:
    """A usage worker whose stream client and broker are the private Redis."""
    return running_worker("usage", env=stack.env)


async def test_a_worker_killed_after_its_commit_and_before_its_xack_charges_once(
    stack: Stack, client: Redis, engine: AsyncEngine, sessions: Sessions, redis_prefix: str
) -> None:
    books = await Books.open(sessions, users=1, experiments_per_user=1)
    stream = redis_keys.usage_stream(redis_prefix)
    with worker(stack) as doomed:
        # The batch waits on a row lock inside its transaction; meanwhile Redis stops taking
        # writes, so once the lock is released the batch commits and then blocks on its XACK.
        async with row_locked(engine, books.users[0]):
            await publish(client, redis_prefix, books.events(40, random.Random(1)))
            await eventually(lambda: _blocked(engine), "the batch inside its transaction")
            await client.client_pause(60_000, all=False)
        await eventually(lambda: books.all_charged(sessions), "the batch's commit")
        doomed.kill()
        await client.client_unpause()
    pending = await client.xpending(stream, redis_keys.CONSUMER_GROUP)
    assert pending["pending"] == 40  # committed, never acknowledged

    with worker(stack):
        await eventually(lambda: settled(client, stream), "the reclaim")
    await books.assert_exact(sessions)
    assert await dead_letters_of(client, redis_prefix, books) == []


async def test_dropped_connections_are_survived(
    stack: Stack, client: Redis, sessions: Sessions, redis_prefix: str
) -> None:
    books = await Books.open(sessions, users=3, experiments_per_user=2)
    rng = random.Random(2)
    with worker(stack) as survivor:
        for _ in range(8):
            await publish(client, redis_prefix, books.events(100, rng))
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            # Every connection but ours: the worker's stream client, its broker connections, beat.
            await client.client_kill_filter(_type="normal", skipme=True)
        await eventually(lambda: books.all_charged(sessions), "every event charged")
        await eventually(
            lambda: settled(client, redis_keys.usage_stream(redis_prefix)), "all acked"
        )
        assert survivor.process.poll() is None
    await books.assert_exact(sessions)
    assert await dead_letters_of(client, redis_prefix, books) == []


async def test_a_clean_restart_while_events_flow_loses_nothing(
    stack: Stack, client: Redis, sessions: Sessions, redis_prefix: str
) -> None:
    books = await Books.open(sessions, users=3, experiments_per_user=2)
    with worker(stack):
        producer = Producer(client, redis_prefix, books)
        flowing = asyncio.create_task(producer.run(1500, random.Random(3)))
        await eventually(lambda: producer.acknowledged(500), "events flowing")
        await asyncio.to_thread(stack.server.restart)
        await flowing
        await eventually(lambda: books.all_charged(sessions), "every event charged")
        await eventually(
            lambda: settled(client, redis_keys.usage_stream(redis_prefix)), "all acked"
        )
    await books.assert_exact(sessions)
    assert await dead_letters_of(client, redis_prefix, books) == []


async def test_a_crash_loses_at_most_the_last_fsync_window_and_doubles_nothing(
    stack: Stack, client: Redis, engine: AsyncEngine, sessions: Sessions, redis_prefix: str
) -> None:
    books = await Books.open(sessions, users=3, experiments_per_user=2)
    loop = asyncio.get_running_loop()
    with worker(stack):
        producer = Producer(client, redis_prefix, books)
        flowing = asyncio.create_task(producer.run(2500, random.Random(4)))

        async def some_are_old_enough() -> bool:
            old = loop.time() - FSYNC_WINDOW_S - 1
            return sum(at < old for at in producer.acked_at.values()) >= 300

        await eventually(some_are_old_enough, "events acknowledged well before the crash")
        crashed_at = loop.time()
        await asyncio.to_thread(stack.server.crash)
        await asyncio.to_thread(stack.server.start)
        await flowing
        await eventually(
            lambda: settled(client, redis_keys.usage_stream(redis_prefix)), "all acked"
        )

    charged = await _charged_event_ids(engine, books)
    durable = {e for e, at in producer.acked_at.items() if at < crashed_at - FSYNC_WINDOW_S}
    assert len(durable) >= 300
    assert durable <= charged <= books.event_ids()
    await books.only(charged).assert_exact(sessions)


class Producer:
    """Publishes events one small pipeline at a time, retrying each until Redis acknowledges it
    (a retry reuses the event id, as a producer must), and notes when each was acknowledged."""

    def __init__(self, client: Redis, prefix: str, books: Books) -> None:
        self.client = client
        self.prefix = prefix
        self.books = books
        self.acked_at: dict[str, float] = {}

    async def acknowledged(self, count: int) -> bool:
        return len(self.acked_at) >= count

    async def run(self, count: int, rng: random.Random) -> None:
        loop = asyncio.get_running_loop()
        documents = self.books.events(count, rng)
        for start in range(0, count, 10):
            group = documents[start : start + 10]
            while True:
                try:
                    await publish(self.client, self.prefix, group)
                    break
                except (RedisError, OSError):
                    await asyncio.sleep(0.05)
            for document in group:
                self.acked_at[document["event_id"]] = loop.time()
            await asyncio.sleep(0.02)


async def _charged_event_ids(engine: AsyncEngine, books: Books) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(UsageCall.event_id).where(UsageCall.experiment_id.in_(books.owners))
        )
        return {row[0] for row in rows}


async def _blocked(engine: AsyncEngine) -> bool:
    return bool(await waiting_on_a_lock(engine))
