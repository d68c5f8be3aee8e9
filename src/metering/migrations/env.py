"""Alembic environment. `metering.migrate` hands it an open connection of our async engine."""

from alembic import context

from metering.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `metering db upgrade` or `metering db downgrade`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    compare_type=True,
    compare_server_default=True,
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
