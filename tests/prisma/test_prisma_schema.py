"""The real Prisma CLI agrees with Alembic: the live database is the platform's schema plus
prisma/metering.prisma, nothing more in `public`; prisma/migrations/ builds the same; and on a
database the platform's Prisma made first, once our migration is marked applied, `prisma migrate
dev` sees no drift.

A table or column Alembic creates that the fragment lacks (or the other way round) fails here,
with the SQL Prisma would run to make the database match its schema.
"""

from pathlib import Path

import pytest
from sqlalchemy import text

from metering.ops import migrate
from metering.ops.db import create_engine
from tests.prisma.cli import (
    PLATFORM_MIGRATION,
    PLATFORM_SCHEMA,
    Workspace,
    billing_sql,
    merged_schema,
    our_migrations,
)

EMPTY_DIFF = "-- This is an empty migration."


@pytest.fixture
def workspace(tmp_path: Path, database_url: str) -> Workspace:
    return Workspace(tmp_path, database_url)


def what_prisma_would_change(workspace: Workspace) -> str:
    """The SQL that would turn the workspace's database into the adopted schema.prisma."""
    workspace.write("live.prisma", PLATFORM_SCHEMA.read_text())
    pulled = workspace.run("db", "pull", "--schema", "live.prisma")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    workspace.write("schema.prisma", merged_schema())
    return workspace.sql(
        "--from-schema-datamodel", "live.prisma", "--to-schema-datamodel", "schema.prisma"
    ).strip()


async def execute(url: str, statement: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def test_alembic_makes_the_platform_schema_plus_the_fragment(workspace: Workspace) -> None:
    assert what_prisma_would_change(workspace) == EMPTY_DIFF


async def test_a_table_the_fragment_lacks_is_caught(migrated_database: str, tmp_path: Path) -> None:
    # What the version table in `public` did: Prisma wants it dropped.
    await execute(migrated_database, "CREATE TABLE public.alembic_version (version_num text)")
    changes = what_prisma_would_change(Workspace(tmp_path, migrated_database))
    assert 'DROP TABLE "alembic_version"' in changes


def test_our_prisma_migration_builds_the_fragment(workspace: Workspace) -> None:
    workspace.add_migration(PLATFORM_MIGRATION, billing_sql())
    for migration in our_migrations():
        workspace.add_migration(migration.name, (migration / "migration.sql").read_text())
    workspace.write("schema.prisma", merged_schema())
    diff = workspace.run(
        "migrate",
        "diff",
        "--from-migrations",
        "migrations",
        "--to-schema-datamodel",
        "schema.prisma",
        "--exit-code",
    )
    expected = workspace.sql(
        "--from-schema-datamodel", str(PLATFORM_SCHEMA), "--to-schema-datamodel", "schema.prisma"
    )
    assert diff.returncode == 0, (
        f"prisma/migrations/ does not build prisma/metering.prisma:\n{diff.stdout}{diff.stderr}\n"
        f"Prisma's migration for the fragment is:\n{expected}"
    )


@pytest.fixture
def shared_database(empty_database: str, tmp_path: Path) -> Workspace:
    """The shared database as it is in production: the platform's Prisma migration first, then
    `metering db upgrade`, then our Prisma migration copied in and marked applied."""
    workspace = Workspace(tmp_path, empty_database)
    workspace.add_migration(PLATFORM_MIGRATION, billing_sql())
    deployed = workspace.run("migrate", "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    migrate.upgrade(empty_database)
    workspace.write("schema.prisma", merged_schema())
    for migration in our_migrations():
        workspace.add_migration(migration.name, (migration / "migration.sql").read_text())
        resolved = workspace.run("migrate", "resolve", "--applied", migration.name)
        assert resolved.returncode == 0, resolved.stdout + resolved.stderr
    return workspace


def test_prisma_migrate_dev_sees_no_drift_on_the_shared_database(
    shared_database: Workspace,
) -> None:
    result = shared_database.run("migrate", "dev", "--skip-generate")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Already in sync" in output
    assert "Drift detected" not in output


def test_upgrade_adopts_a_database_prismas_migrations_made(
    empty_database: str, tmp_path: Path
) -> None:
    # A platform developer's database: `prisma migrate dev` applied our migration too.
    workspace = Workspace(tmp_path, empty_database)
    workspace.add_migration(PLATFORM_MIGRATION, billing_sql())
    for migration in our_migrations():
        workspace.add_migration(migration.name, (migration / "migration.sql").read_text())
    deployed = workspace.run("migrate", "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    migrate.upgrade(empty_database)
    assert what_prisma_would_change(workspace) == EMPTY_DIFF
