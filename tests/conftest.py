"""Fixtures: a throwaway PostgreSQL database per test run, migrated by Alembic.

Tests isolate themselves by making their own users and experiments, so the run's database stays
consistent as a whole: `reconcile` over it must be clean after any test.
"""

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from metering import migrate
from metering.db import create_engine, make_sessionmaker
from tests.factories import create_database, drop_database


def _new_database(kind: str) -> str:
    return create_database(f"metering_{kind}_{os.getpid()}_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """This run's database, migrated to head; dropped afterwards."""
    url = _new_database("test")
    migrate.upgrade(url)
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    try:
        yield url
    finally:
        if previous is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = previous
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
