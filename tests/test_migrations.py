"""Migrations agree with the models, run both ways, and create exactly Prisma's schema."""

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from metering import migrate
from metering.db import create_engine
from metering.errors import PermanentError
from metering.models import Base
from tests.prisma.cli import billing_sql
from tests.schema_snapshot import PLATFORM_TABLES, snapshot

ALL_TABLES = (*PLATFORM_TABLES, "UnbilledUsage", "StripeEvent")


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, Base.metadata))


async def test_models_and_migrations_agree(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        assert await connection.run_sync(_differences) == []


async def test_upgrade_downgrade_upgrade_on_an_empty_database(empty_database: str) -> None:
    await migrate.upgrade_async(empty_database)
    first = await snapshot(empty_database, ALL_TABLES)
    await migrate.downgrade_async(empty_database, "base")
    emptied = await snapshot(empty_database, ALL_TABLES)
    assert emptied == {"columns": [], "indexes": [], "constraints": [], "enums": []}
    await migrate.upgrade_async(empty_database)
    assert await snapshot(empty_database, ALL_TABLES) == first


async def _run_prisma_sql(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            for statement in billing_sql().split(";"):
                body = "\n".join(
                    line for line in statement.splitlines() if not line.startswith("--")
                ).strip()
                if body:
                    await connection.execute(text(body))
    finally:
        await engine.dispose()


async def test_first_migration_creates_what_prisma_creates(
    empty_database: str, database_url: str
) -> None:
    await migrate.upgrade_async(empty_database, "0001")
    ours = await snapshot(empty_database, PLATFORM_TABLES)
    await migrate.downgrade_async(empty_database, "base")
    await _run_prisma_sql(empty_database)
    assert await snapshot(empty_database, PLATFORM_TABLES) == ours


async def test_upgrade_adopts_tables_prisma_already_created(
    empty_database: str, database_url: str
) -> None:
    await _run_prisma_sql(empty_database)
    await migrate.upgrade_async(empty_database)
    assert await snapshot(empty_database, ALL_TABLES) == await snapshot(database_url, ALL_TABLES)


@pytest.fixture(scope="module")
async def schema(database_url: str) -> dict[str, Any]:
    return await snapshot(database_url, ALL_TABLES)


def _columns(schema: dict[str, Any], table: str) -> dict[str, tuple[Any, ...]]:
    return {c[1]: c[2:] for c in schema["columns"] if c[0] == table}


async def test_prisma_names_and_types(schema: dict[str, Any]) -> None:
    users = _columns(schema, "User")
    assert set(users) == {"id", "email", "name", "credits", "createdAt", "updatedAt"}
    assert users["id"][0] == "text"
    assert users["id"][4] == "NO"
    assert users["credits"][0] == "integer"
    assert users["credits"][5] == "0"
    for timestamp in ("createdAt", "updatedAt"):
        assert users[timestamp][:2] == ("timestamp without time zone", 3)
    assert users["createdAt"][5] == "CURRENT_TIMESTAMP"
    assert users["updatedAt"][5] is None, "Prisma's @updatedAt has no database default"

    transactions = _columns(schema, "CreditTransaction")
    assert transactions["type"][0] == "TransactionType"
    assert transactions["metadata"][0] == "jsonb"
    assert transactions["amount"][0] == "integer"
    assert {"stripePaymentId", "stripeCheckoutId", "idempotencyKey"} <= set(transactions)

    experiments = _columns(schema, "MAACExperiment")
    assert experiments["apiKeyMode"][5] == "'system'::text"
    assert experiments["creditsUsed"][0] == "integer"
    assert experiments["estimatedCredits"][4] == "YES"
    assert experiments["exactCreditsUsed"][:4] == ("numeric", None, 38, 18)

    assert schema["enums"] == [("TransactionType", ["PURCHASE", "USAGE", "REFUND", "ADJUSTMENT"])]


async def test_prisma_index_and_constraint_names(schema: dict[str, Any]) -> None:
    indexes = {name: definition for _, name, definition in schema["indexes"]}
    assert indexes["User_email_key"].startswith('CREATE UNIQUE INDEX "User_email_key"')
    assert indexes["User_email_idx"].endswith("USING btree (email)")
    assert indexes["CreditTransaction_userId_createdAt_idx"].endswith(
        'USING btree ("userId", "createdAt")'
    )
    assert indexes["CreditTransaction_type_idx"].endswith("USING btree (type)")
    assert indexes["CreditTransaction_idempotencyKey_key"].startswith("CREATE UNIQUE INDEX")

    constraints = {name: (kind, definition) for _, name, kind, definition in schema["constraints"]}
    for table in ALL_TABLES:
        assert constraints[f"{table}_pkey"][0] == "p"
    assert constraints["CreditTransaction_userId_fkey"] == (
        "f",
        'FOREIGN KEY ("userId") REFERENCES "User"(id) ON UPDATE CASCADE ON DELETE CASCADE',
    )
    assert constraints["MAACExperiment_userId_fkey"] == (
        "f",
        'FOREIGN KEY ("userId") REFERENCES "User"(id) ON UPDATE CASCADE ON DELETE SET NULL',
    )


async def _scalars(url: str, *statements: str) -> list[Any]:
    """Run `statements` in one transaction; the first column of the last one's rows."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                result = await connection.execute(text(statement))
            return list(result.scalars()) if result.returns_rows else []
    finally:
        await engine.dispose()


VERSION_TABLES = (
    "SELECT table_schema FROM information_schema.tables WHERE table_name = 'alembic_version'"
)


async def test_the_version_table_lives_outside_prismas_schema(migrated_database: str) -> None:
    assert await _scalars(migrated_database, VERSION_TABLES) == ["metering"]
    head = migrate.head_revision()
    assert await _scalars(
        migrated_database, "SELECT version_num FROM metering.alembic_version"
    ) == [head]


async def test_upgrade_moves_a_version_table_from_public(migrated_database: str) -> None:
    # A database migrated while the version table lived in `public`.
    await _scalars(
        migrated_database,
        "ALTER TABLE metering.alembic_version SET SCHEMA public",
        "DROP SCHEMA metering",
    )
    await migrate.upgrade_async(migrated_database)
    assert await _scalars(migrated_database, VERSION_TABLES) == ["metering"]
    assert await _scalars(
        migrated_database, "SELECT version_num FROM metering.alembic_version"
    ) == [migrate.head_revision()]
    await migrate.downgrade_async(migrated_database, "0001")
    assert await _scalars(
        migrated_database, "SELECT version_num FROM metering.alembic_version"
    ) == ["0001"]


async def test_upgrade_refuses_two_version_tables(migrated_database: str) -> None:
    await _scalars(
        migrated_database,
        "CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY)",
        "INSERT INTO public.alembic_version VALUES ('0001')",
    )
    with pytest.raises(PermanentError, match=r"both public\.alembic_version and metering"):
        await migrate.upgrade_async(migrated_database)
    assert sorted(await _scalars(migrated_database, VERSION_TABLES)) == ["metering", "public"]
