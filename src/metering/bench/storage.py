"""Bytes on disk per call: the whole database's size before and after a phase.

A snapshot is taken after a CHECKPOINT: every relation of the database (all schemas, the
catalogs included) with its heap, TOAST and indexes (`pg_total_relation_size` of each table and
materialized view; TOAST tables and indexes are counted with their table), and
`pg_database_size` beside it. The difference of two snapshots, divided by the calls recorded
between them, is what a call costs in storage, usage rows and balance updates included.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import Text

TABLES = ("UsageCall", "CreditTransaction", "UnbilledUsage", "User", "MAACExperiment")
"""Shown one by one; every other relation is summed as "others"."""

_SIZES = text(
    "SELECT n.nspname AS schema, c.relname AS name, pg_total_relation_size(c.oid) AS bytes "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm')"
)
_COUNTS = text(
    'SELECT (SELECT count(*) FROM "UsageCall" WHERE "experimentId" = ANY(:ids)) AS calls, '
    "(SELECT count(*) FROM \"CreditTransaction\" WHERE type = 'USAGE' "
    'AND "experimentId" = ANY(:ids)) AS usage_rows'
).bindparams(bindparam("ids", type_=ARRAY(Text)))


async def snapshot(engine: AsyncEngine) -> dict[str, int]:
    """Bytes per table name (ours in "public"; others as `schema.name`), plus the key
    `(database)` for `pg_database_size`."""
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("CHECKPOINT"))
        sizes = {
            (r.name if r.schema == "public" else f"{r.schema}.{r.name}"): int(r.bytes)
            for r in await autocommit.execute(_SIZES)
        }
        database = await autocommit.scalar(text("SELECT pg_database_size(current_database())"))
    return sizes | {"(database)": int(database or 0)}


async def counts(engine: AsyncEngine, experiments: Sequence[str]) -> tuple[int, int]:
    """Call records and USAGE rows of these experiments."""
    async with engine.connect() as connection:
        row = (await connection.execute(_COUNTS, {"ids": list(experiments)})).one()
        return int(row.calls), int(row.usage_rows)


def per_call(
    before: Mapping[str, int], after: Mapping[str, int], calls: int, usage_rows: int
) -> dict[str, Any]:
    """Growth between two snapshots, in all and per table, in bytes per call."""
    growth = {name: after.get(name, 0) - before.get(name, 0) for name in after.keys() | before}
    database = growth.pop("(database)")
    tables = {name: growth.pop(name, 0) for name in TABLES}
    tables["others"] = sum(growth.values())
    total = sum(tables.values())
    return {
        "calls": calls,
        "usage_rows": usage_rows,
        "calls_per_usage_row": round(calls / usage_rows, 1) if usage_rows else None,
        "bytes": total,
        "bytes_per_call": round(total / calls, 1) if calls else None,
        "database_size_bytes_per_call": round(database / calls, 1) if calls else None,
        "tables_bytes_per_call": {
            name: round(size / calls, 1) if calls else None for name, size in tables.items()
        },
    }
