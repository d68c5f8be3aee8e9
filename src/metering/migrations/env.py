"""Alembic environment. `metering.ops.migrate` hands it an open connection of our async engine.

Alembic's version table lives in schema `metering`, not in `public`: `public` is Prisma's, and
holds only tables its schema declares. A database migrated before keeps its history: its
`public.alembic_version` is moved over first.
"""

from alembic import context

from metering.ops.migrate import VERSION_SCHEMA, VERSION_TABLE, adopt_version_table
from metering.ops.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `metering db upgrade` or `metering db downgrade`")

adopt_version_table(connection)
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    compare_type=True,
    compare_server_default=True,
    transaction_per_migration=True,
    version_table=VERSION_TABLE,
    version_table_schema=VERSION_SCHEMA,
)
with context.begin_transaction():
    context.run_migrations()
