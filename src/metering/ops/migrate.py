"""Alembic, driven from code: `metering db upgrade|downgrade`, the start-up check and the tests."""

import asyncio
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from metering.errors import DatabaseNotMigrated, DatabaseUnavailable, PermanentError
from metering.ops.db import create_engine, first_line
from metering.ops.settings import to_asyncpg_url

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
"""Alembic's scripts, shipped in the package (package data of the wheel)."""
VERSION_SCHEMA = "metering"
"""Schema of Alembic's version table: ours, beside Prisma's `public`."""
VERSION_TABLE = "alembic_version"


def alembic_config() -> Config:
    """Alembic's configuration for the package's `migrations/` folder."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def adopt_version_table(connection: Connection) -> None:
    """Create schema `metering`, and move a `public.alembic_version` into it (committed).

    Databases migrated while the version table lived in `public` keep their history. Refuses
    (`PermanentError`) when both tables exist: which one is true is for an operator to say.
    """
    with connection.begin_nested() if connection.in_transaction() else connection.begin():
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {VERSION_SCHEMA}"))
        if connection.scalar(text(f"SELECT to_regclass('public.{VERSION_TABLE}')")) is None:
            return
        if connection.scalar(text(f"SELECT to_regclass('{VERSION_SCHEMA}.{VERSION_TABLE}')")):
            raise PermanentError(
                f"both public.{VERSION_TABLE} and {VERSION_SCHEMA}.{VERSION_TABLE} exist: keep "
                f"the one naming the database's true revision and drop the other",
                code="version_table_conflict",
            )
        connection.execute(text(f"ALTER TABLE public.{VERSION_TABLE} SET SCHEMA {VERSION_SCHEMA}"))


def head_revision() -> str | None:
    """The newest migration's revision id."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """Migrate up to `revision` (from inside a running event loop)."""
    await _run_command(database_url, lambda config: command.upgrade(config, revision))


async def downgrade_async(database_url: str, revision: str = "-1") -> None:
    """Migrate down to `revision` (from inside a running event loop)."""
    await _run_command(database_url, lambda config: command.downgrade(config, revision))


def upgrade(database_url: str, revision: str = "head") -> None:
    asyncio.run(upgrade_async(database_url, revision))


def downgrade(database_url: str, revision: str = "-1") -> None:
    asyncio.run(downgrade_async(database_url, revision))


async def _run_command(database_url: str, run: Callable[[Config], None]) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:

            def on_connection(sync_connection: Connection) -> None:
                config = alembic_config()
                config.attributes["connection"] = sync_connection
                run(config)

            await connection.run_sync(on_connection)
            await connection.commit()
    finally:
        await engine.dispose()


def database_name(database_url: str) -> str:
    return make_url(to_asyncpg_url(database_url)).database or ""


async def ensure_database(database_url: str) -> bool:
    """Create the database named in the URL if it does not exist; True if it was created."""
    url = make_url(to_asyncpg_url(database_url))
    name = url.database or ""
    engine = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            exists = await connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if exists:
                return False
            quoted = name.replace('"', '""')
            await connection.execute(text(f'CREATE DATABASE "{quoted}"'))
            return True
    except (OSError, DBAPIError) as error:
        raise DatabaseUnavailable(
            f"cannot reach PostgreSQL at {url.host}:{url.port or 5432}: {first_line(error)}; "
            "check DATABASE_URL and that PostgreSQL is running"
        ) from error
    finally:
        await engine.dispose()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's migration (None if it has none); `DatabaseUnavailable` if out of reach."""
    try:
        async with engine.connect() as connection:
            table = await connection.scalar(
                text(f"SELECT to_regclass('{VERSION_SCHEMA}.{VERSION_TABLE}')")
            )
            if table is None:
                return None
            current = await connection.scalar(
                text(f"SELECT version_num FROM {VERSION_SCHEMA}.{VERSION_TABLE}")
            )
            return str(current) if current is not None else None
    except (OSError, DBAPIError) as error:
        raise DatabaseUnavailable(
            f"cannot reach PostgreSQL at {engine.url.host}:{engine.url.port or 5432}: "
            f"{first_line(error)}; check DATABASE_URL and that PostgreSQL is running"
        ) from error


async def check_database(engine: AsyncEngine) -> None:
    """Fail with a one-line error unless the database is reachable and fully migrated."""
    current = await current_revision(engine)
    head = head_revision()
    if current != head:
        raise DatabaseNotMigrated(
            f"database {engine.url.database!r} is at migration {current or 'none'}, "
            f"expected {head}: run `metering db upgrade`"
        )
