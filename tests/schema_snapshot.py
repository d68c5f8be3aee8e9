"""A comparable description of a database's schema, read from PostgreSQL's catalogs."""

from typing import Any

from sqlalchemy import text

from metering.ops.db import create_engine

_COLUMNS = text(
    """
    SELECT table_name, column_name, ordinal_position,
           CASE WHEN data_type = 'USER-DEFINED' THEN udt_name ELSE data_type END AS type,
           datetime_precision, numeric_precision, numeric_scale, is_nullable, column_default
    FROM information_schema.columns WHERE table_schema = 'public' AND table_name = ANY(:tables)
    ORDER BY table_name, column_name
    """
)
_INDEXES = text(
    "SELECT tablename, indexname, indexdef FROM pg_indexes "
    "WHERE schemaname = 'public' AND tablename = ANY(:tables) ORDER BY indexname"
)
_CONSTRAINTS = text(
    """
    SELECT c.conrelid::regclass::text AS table_name, c.conname, c.contype::text AS contype,
           pg_get_constraintdef(c.oid) AS definition
    FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
    WHERE n.nspname = 'public' AND c.conrelid::regclass::text = ANY(:quoted)
    ORDER BY c.conname
    """
)
_ENUMS = text(
    """
    SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) AS labels
    FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname ORDER BY t.typname
    """
)

PLATFORM_TABLES = ("User", "CreditTransaction", "MAACExperiment")


async def snapshot(url: str, tables: tuple[str, ...]) -> dict[str, Any]:
    """Columns (name, type, precision, nullability, default), indexes, constraints and enums."""
    engine = create_engine(url, pool_size=1)
    params = {"tables": list(tables), "quoted": [f'"{t}"' for t in tables]}
    try:
        async with engine.connect() as connection:
            columns = [tuple(r) for r in await connection.execute(_COLUMNS, params)]
            indexes = [tuple(r) for r in await connection.execute(_INDEXES, params)]
            constraints = [tuple(r) for r in await connection.execute(_CONSTRAINTS, params)]
            enums = [(r.typname, list(r.labels)) for r in await connection.execute(_ENUMS)]
    finally:
        await engine.dispose()
    return {
        # Column order differs when columns are added by a later migration; names matter, not order.
        "columns": sorted((c[0], c[1], *c[3:]) for c in columns),
        "indexes": indexes,
        "constraints": constraints,
        "enums": enums,
    }
