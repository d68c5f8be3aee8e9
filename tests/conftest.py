"""Fixtures: a throwaway PostgreSQL database per test run, migrated by Alembic.

Tests isolate themselves by making their own users and experiments, so the run's database stays
consistent as a whole: `reconcile` over it must be clean after any test.
"""

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from metering.ops import migrate
from metering.ops.db import create_engine, make_sessionmaker
from metering.ops.settings import get_settings
from tests.factories import create_database, drop_database
from tests.support import REDIS_URL, free_port

RUN_ID = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session", autouse=True)
def redis_prefix() -> Iterator[str]:
    """This run's Redis key prefix: every key the service and Celery write starts with it."""
    prefix = f"metering-test-{RUN_ID}"
    # The suite's events occurred on fixed dates of the price catalog, long before today: a
    # window of ten years keeps them charged (tests of the window set their own).
    os.environ.update(
        REDIS_URL=REDIS_URL, METERING_REDIS_PREFIX=prefix, METERING_USAGE_WINDOW_DAYS="3650"
    )
    get_settings.cache_clear()
    yield prefix
    client = SyncRedis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module", autouse=True)
def fresh_usage_streams(redis_prefix: str) -> None:
    """Each test module starts with no usage stream, dead letter or drain lock of this run.

    Modules share the run's prefix; entries an earlier module left pending (a case that failed,
    a worker killed on purpose) must not count against the next one.
    """
    client = SyncRedis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{redis_prefix}:usage*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


def _new_database(kind: str) -> str:
    return create_database(f"metering_{kind}_{RUN_ID.replace('-', '_')}_{uuid.uuid4().hex[:4]}")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """This run's database, migrated to head; dropped afterwards."""
    url = _new_database("test")
    migrate.upgrade(url)
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    try:
        yield url
    finally:
        if previous is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = previous
        get_settings.cache_clear()
        drop_database(url)


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=10)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database with nothing in it (not migrated); dropped afterwards."""
    url = _new_database("empty")
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
async def migrated_database(empty_database: str) -> str:
    """A private database migrated to head, for tests that must see or break all of it."""
    await migrate.upgrade_async(empty_database)
    return empty_database


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()
