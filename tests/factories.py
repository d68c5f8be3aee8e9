"""Small helpers that make test data and throwaway databases."""

import asyncio
import os
import uuid
from datetime import UTC, datetime

from sqlalchemy import func, insert, make_url, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from metering.ledger import charging, journal
from metering.ops.models import MAACExperiment, TransactionType, User
from metering.ops.settings import to_asyncpg_url

SERVER_URL = os.environ.get(
    "METERING_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def server_database_url(name: str) -> str:
    """The `postgresql://` URL of database `name` on the test server (which may not exist yet)."""
    return (
        make_url(to_asyncpg_url(SERVER_URL))
        .set(database=name)
        .render_as_string(hide_password=False)
        .replace("postgresql+asyncpg://", "postgresql://")
    )


async def _admin(statement: str) -> None:
    engine = create_async_engine(to_asyncpg_url(SERVER_URL), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def create_database(name: str) -> str:
    """Create an empty database and return its `postgresql://` URL."""
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return server_database_url(name)


def drop_database(url: str) -> None:
    name = make_url(to_asyncpg_url(url)).database
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


CALL = charging.CallFacts(
    provider="openai",
    model="gpt-4o-mini",
    tier="standard",
    input_tokens=1000,
    output_tokens=200,
    cached_input_tokens=0,
    cache_write_tokens=0,
    reasoning_tokens=0,
    occurred_at=datetime(2025, 9, 1, 12, 0, tzinfo=UTC),
    catalog_version="test",
)
"""The facts of a call, for ledger tests that set its cost directly."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def create_user(session: AsyncSession, credits: int = 0) -> str:
    """A new user; `credits` arrive through a PURCHASE so the ledger stays consistent."""
    user_id = unique("user")
    await session.execute(
        insert(User).values(id=user_id, email=f"{user_id}@example.com", updated_at=func.now())
    )
    if credits:
        await journal.post(
            session,
            journal.Posting(
                user_id=user_id,
                type=TransactionType.PURCHASE,
                amount=credits,
                description="test purchase",
                idempotency_key=unique("purchase"),
            ),
        )
    return user_id


async def create_experiment(
    session: AsyncSession, user_id: str | None, api_key_mode: str = "system"
) -> str:
    experiment_id = unique("exp")
    await session.execute(
        insert(MAACExperiment).values(
            id=experiment_id,
            name=f"experiment {experiment_id}",
            user_id=user_id,
            api_key_mode=api_key_mode,
            updated_at=func.now(),
        )
    )
    return experiment_id
