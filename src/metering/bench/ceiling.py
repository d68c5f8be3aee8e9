"""The ceiling: the workload's priced calls written bare, by one process on one connection.

No Redis, no Celery, no ledger: each distinct call becomes one row of a plain logged table made
for the run (`TABLE`, the typed facts of a call and nothing else), `batch_size` rows per
transaction, and each transaction also applies the batch's balance changes (one UPDATE of
"User" and one of "MAACExperiment", from per-user and per-experiment sums). Both ways of sending
the rows are timed, an INSERT ... SELECT FROM unnest(...) and a binary COPY, each into its own
table; the faster is the ceiling. Events are validated and priced before the clock starts.
"""

import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from metering.bench.workload import USER_CREDITS, Population, Workload
from metering.ledger import charging
from metering.ops.settings import to_asyncpg_url
from metering.pricing import get_catalog
from metering.pricing.money import whole_credits
from metering.usage.parse import parse_entries
from metering.usage.price import price_events, to_charges
from metering.usage.streams import Entry

METHODS = ("unnest", "copy")
COLUMNS = (
    "event_id",
    "experiment_id",
    "user_id",
    "provider",
    "model",
    "tier",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "exact_cost",
    "occurred_at",
)
_CREATE = (
    "CREATE TABLE {table} (event_id text PRIMARY KEY, experiment_id text NOT NULL, "
    "user_id text, provider text NOT NULL, model text NOT NULL, tier text NOT NULL, "
    "input_tokens int NOT NULL, output_tokens int NOT NULL, cached_input_tokens int NOT NULL, "
    "cache_write_tokens int NOT NULL, reasoning_tokens int NOT NULL, "
    "exact_cost numeric(38,18) NOT NULL, occurred_at timestamp(3) NOT NULL)"
)
_UNNEST = (
    "INSERT INTO {table} SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
    "$5::text[], $6::text[], $7::int[], $8::int[], $9::int[], $10::int[], $11::int[], "
    "$12::numeric[], $13::timestamp(3)[])"
)
_USERS = (
    'UPDATE "User" AS u SET credits = u.credits - d.delta, "updatedAt" = now() '
    "FROM unnest($1::text[], $2::bigint[]) AS d(id, delta) WHERE u.id = d.id"
)
_EXPERIMENTS = (
    'UPDATE "MAACExperiment" AS e SET "creditsUsed" = e."creditsUsed" + d.delta, '
    '"exactCreditsUsed" = e."exactCreditsUsed" + d.exact, "updatedAt" = now() '
    "FROM unnest($1::text[], $2::bigint[], $3::numeric[]) AS d(id, delta, exact) "
    "WHERE e.id = d.id"
)


def table(method: str) -> str:
    return f"bench_ceiling_{method}"


@dataclass(frozen=True)
class CeilingRun:
    method: str
    rows: int
    seconds: float
    credits: int
    """Credits taken from the users in all (whole credits per experiment and batch)."""


def price(work: Workload, markup: Decimal, fee: Decimal) -> list[charging.UsageCharge]:
    """The workload's entries as priced charges, in publish order, a retried call as often as it
    was sent (raises if any cannot be charged)."""
    entries = [Entry("", f"0-{n}", {"event": payload}) for n, payload in enumerate(work.payloads)]
    parsed, invalid, _ = parse_entries(entries)
    priced, unpriced = price_events(parsed, get_catalog(None))
    modes = {e[0]: e[2] for e in work.population.experiments}
    charges, refused = to_charges(priced, modes, markup, fee)
    if invalid or unpriced or refused:
        first = (invalid + unpriced + refused)[0]
        raise RuntimeError(f"the workload has an event that cannot be charged: {first.detail}")
    return charges


def distinct(charges: Iterable[charging.UsageCharge]) -> list[charging.UsageCharge]:
    """The first charge of each event id: the calls, each once."""
    first: dict[str, charging.UsageCharge] = {}
    for charge in charges:
        first.setdefault(charge.event_id, charge)
    return list(first.values())


async def run(
    database_url: str,
    people: Population,
    calls: Sequence[charging.UsageCharge],
    batch_size: int,
    method: str,
) -> CeilingRun:
    """Write `calls` into a new `table(method)`, `batch_size` per transaction, with the balance
    updates of each batch. The population's balances stay changed (see `restore`)."""
    owners = {e[0]: e[1] for e in people.experiments}
    async with _connect(database_url) as connection:
        await connection.execute(_CREATE.format(table=table(method)))
        # Rows for COPY, columns for unnest: shaped before the clock starts, like the pricing.
        batches: list[Sequence[Sequence[Any]]] = [
            _rows(calls[b : b + batch_size], owners) for b in range(0, len(calls), batch_size)
        ]
        if method == "unnest":
            batches = [[list(c) for c in zip(*rows, strict=True)] for rows in batches]
        deltas = [
            _deltas(calls[b : b + batch_size], owners) for b in range(0, len(calls), batch_size)
        ]
        credits = 0
        started = time.monotonic()
        for batch, (users, experiments) in zip(batches, deltas, strict=True):
            async with connection.transaction():
                if method == "copy":
                    await connection.copy_records_to_table(
                        table(method), records=batch, columns=COLUMNS
                    )
                else:
                    await connection.execute(_UNNEST.format(table=table(method)), *batch)
                await connection.execute(_USERS, list(users), list(users.values()))
                await connection.execute(
                    _EXPERIMENTS,
                    list(experiments),
                    [d for d, _ in experiments.values()],
                    [e for _, e in experiments.values()],
                )
            credits += sum(users.values())
        return CeilingRun(method, len(calls), time.monotonic() - started, credits)


async def inspect(database_url: str, method: str) -> dict[str, int]:
    """Rows, distinct event ids and total bytes (heap, TOAST, indexes) of `table(method)`."""
    async with _connect(database_url) as connection:
        row = await connection.fetchrow(
            f"SELECT count(*) AS rows, count(DISTINCT event_id) AS events, "
            f"pg_total_relation_size('{table(method)}') AS bytes FROM {table(method)}"
        )
        assert row is not None
        return {"rows": row["rows"], "events": row["events"], "bytes": row["bytes"]}


async def restore(database_url: str, people: Population) -> None:
    """Put the population's balances back as seeded and drop the ceiling tables, so that
    the ledger's invariants hold again for `reconcile` and the database sizes that follow."""
    async with _connect(database_url) as connection, connection.transaction():
        await connection.execute(
            'UPDATE "User" SET credits = $1 WHERE id = ANY($2::text[])',
            USER_CREDITS,
            list(people.users),
        )
        await connection.execute(
            'UPDATE "MAACExperiment" SET "creditsUsed" = 0, "exactCreditsUsed" = 0 '
            "WHERE id = ANY($1::text[])",
            [e[0] for e in people.experiments],
        )
        for method in METHODS:
            await connection.execute(f"DROP TABLE IF EXISTS {table(method)}")


@contextlib.asynccontextmanager
async def _connect(database_url: str) -> AsyncIterator[Any]:
    """One asyncpg connection, outside any SQLAlchemy transaction: the bare driver."""
    engine = create_async_engine(
        to_asyncpg_url(database_url), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    try:
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            yield raw.driver_connection
    finally:
        await engine.dispose()


def _rows(
    calls: Sequence[charging.UsageCharge], owners: Mapping[str, str]
) -> list[tuple[Any, ...]]:
    return [
        (
            c.event_id,
            c.experiment_id,
            owners[c.experiment_id],
            c.call.provider,
            c.call.model,
            c.call.tier,
            c.call.input_tokens,
            c.call.output_tokens,
            c.call.cached_input_tokens,
            c.call.cache_write_tokens,
            c.call.reasoning_tokens,
            c.exact_credits,
            _utc(c.call.occurred_at),
        )
        for c in calls
    ]


def _deltas(
    calls: Sequence[charging.UsageCharge], owners: Mapping[str, str]
) -> tuple[dict[str, int], dict[str, tuple[int, Decimal]]]:
    """Per user, the credits a batch takes; per experiment, (credits, exact credits). Sorted by
    id, the order the ledger locks rows in."""
    exact: dict[str, Decimal] = defaultdict(Decimal)
    for call in calls:
        exact[call.experiment_id] += call.exact_credits
    experiments = {e: (whole_credits(exact[e]), exact[e]) for e in sorted(exact)}
    users: dict[str, int] = defaultdict(int)
    for experiment_id, (credits, _) in experiments.items():
        users[owners[experiment_id]] += credits
    return {u: users[u] for u in sorted(users)}, experiments


def _utc(moment: datetime) -> datetime:
    """A naive UTC datetime, as a timestamp(3) column holds it."""
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)
