"""Exactly once, checked after each phase: every distinct event charged once, at its price.

For the phase's experiments: one call record (`UsageCall`) per distinct event id and none other;
each experiment's `creditsUsed` is the ceiling of its events' exact costs (priced independently
here) and minus the sum of its USAGE rows, however many calls each row sums; each user's balance
is its purchase minus its experiments' charges; and `reconcile` finds nothing wrong in the whole
database. The ceiling's bare table is checked apart (`check_ceiling`).
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import Text

from metering.bench.ceiling import price
from metering.bench.workload import USER_CREDITS, Population, Workload
from metering.ledger import charging
from metering.ledger.reconcile import find_violations
from metering.pricing.money import whole_credits


@dataclass
class Check:
    """The outcome of a phase's check; `problems` is empty when everything was charged once."""

    rows: int = 0
    """Call records."""
    expected_rows: int = 0
    usage_rows: int = 0
    credits: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


_ROWS = text(
    'SELECT e.id, e."userId" AS user_id, e."creditsUsed" AS used, COALESCE(c.n, 0) AS n, '
    "COALESCE(t.n, 0) AS usage_rows, COALESCE(t.total, 0) AS total "
    'FROM "MAACExperiment" e LEFT JOIN (SELECT "experimentId", count(*) AS n FROM "UsageCall" '
    'WHERE "experimentId" = ANY(:ids) GROUP BY 1) c ON c."experimentId" = e.id '
    'LEFT JOIN (SELECT "experimentId", count(*) AS n, sum(amount) AS total '
    'FROM "CreditTransaction" WHERE type = \'USAGE\' AND "experimentId" = ANY(:ids) '
    'GROUP BY 1) t ON t."experimentId" = e.id WHERE e.id = ANY(:ids)'
).bindparams(bindparam("ids", type_=ARRAY(Text)))
_BALANCES = text('SELECT id, credits FROM "User" WHERE id = ANY(:ids)').bindparams(
    bindparam("ids", type_=ARRAY(Text))
)


@dataclass
class Expected:
    """Per experiment: how many distinct events, and their exact cost in credits."""

    events: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    exact: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    seen: set[str] = field(default_factory=set)

    def add(self, charges: Iterable[charging.UsageCharge]) -> "Expected":
        """Count each event id once, however many chunks it appears in."""
        for charge in charges:
            if charge.event_id not in self.seen:
                self.seen.add(charge.event_id)
                self.events[charge.experiment_id] += 1
                self.exact[charge.experiment_id] += charge.exact_credits
        return self


def expect(work: Workload, markup: Decimal, fee: Decimal, chunk: int = 20_000) -> Expected:
    """Price the workload chunk by chunk (a backlog of millions never sits in memory priced)."""
    expected = Expected()
    for begin in range(0, len(work.payloads), chunk):
        end = begin + chunk
        part = Workload(
            work.population,
            work.event_ids[begin:end],
            work.experiment_ids[begin:end],
            work.payloads[begin:end],
        )
        expected.add(price(part, markup, fee))
    return expected


async def check(session: AsyncSession, people: Population, expected: Expected) -> Check:
    """Compare the database with the phase's distinct events, priced independently."""
    exact, events = expected.exact, expected.events
    result = Check(expected_rows=len(expected.seen))
    spent: dict[str, int] = defaultdict(int)
    experiments = [e[0] for e in people.experiments]
    for row in await session.execute(_ROWS, {"ids": experiments}):
        due = whole_credits(exact[row.id])
        result.rows += row.n
        result.usage_rows += row.usage_rows
        result.credits += row.used
        spent[row.user_id] += row.used
        if row.n != events[row.id]:
            result.problems.append(f"{row.id}: {row.n} call records for {events[row.id]} events")
        if row.used != due or -row.total != due:
            result.problems.append(
                f"{row.id}: creditsUsed {row.used}, rows {-row.total}, expected {due}"
            )
    for row in await session.execute(_BALANCES, {"ids": list(people.users)}):
        if row.credits != USER_CREDITS - spent[row.id]:
            result.problems.append(
                f"user {row.id}: balance {row.credits}, expected {USER_CREDITS - spent[row.id]}"
            )
    result.problems += [f"reconcile: {v}" for v in await find_violations(session)]
    return result


def check_ceiling(tables: dict[str, dict[str, int]], expected: Expected, credits: int) -> Check:
    """Each ceiling table (see `ceiling.inspect`) holds every distinct event exactly once."""
    result = Check(expected_rows=len(expected.seen), credits=credits)
    result.rows = min(table["rows"] for table in tables.values())
    for method, table in tables.items():
        if not table["rows"] == table["events"] == len(expected.seen):
            result.problems.append(
                f"{method}: {table['rows']} rows, {table['events']} event ids "
                f"for {len(expected.seen)} events"
            )
    return result
