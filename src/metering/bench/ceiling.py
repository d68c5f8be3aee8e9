"""The ceiling: the same rows written straight to PostgreSQL by one process, no Redis, no Celery.

Events are validated and priced before the clock starts; the timed part is only the ledger's
batched write (`ledger.charge_usage`: one multi-row INSERT of the USAGE rows plus one aggregated
UPDATE of the balances and one of the experiments, per transaction) on one connection.
"""

import time
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from metering import ledger
from metering.bench.workload import Workload
from metering.db import create_engine, make_sessionmaker, run_in_transaction
from metering.pricing import get_catalog
from metering.usage.parse import parse_entries
from metering.usage.price import price_events, to_charges
from metering.usage.streams import Entry


@dataclass(frozen=True)
class CeilingRun:
    rows: int
    seconds: float


def price(work: Workload, markup: Decimal, fee: Decimal) -> list[ledger.UsageCharge]:
    """The workload's distinct events as priced charges, in publish order (raises if any fails)."""
    entries = [Entry("", f"0-{n}", {"event": payload}) for n, payload in enumerate(work.payloads)]
    parsed, invalid, _ = parse_entries(entries)
    priced, unpriced = price_events(parsed, get_catalog(None))
    modes = {e[0]: e[2] for e in work.population.experiments}
    charges, refused = to_charges(priced, modes, markup, fee)
    if invalid or unpriced or refused:
        first = (invalid + unpriced + refused)[0]
        raise RuntimeError(f"the workload has an event that cannot be charged: {first.detail}")
    return charges


async def run(database_url: str, charges: list[ledger.UsageCharge], batch_size: int) -> CeilingRun:
    """Charge `charges` in batches of `batch_size`, one transaction each, on one connection."""
    engine = create_engine(database_url, pool_size=1)
    sessions = make_sessionmaker(engine)
    try:
        started = time.monotonic()
        for begin in range(0, len(charges), batch_size):
            batch = charges[begin : begin + batch_size]

            async def work(session: AsyncSession, batch: list[ledger.UsageCharge] = batch) -> None:
                await ledger.charge_usage(session, batch)

            await run_in_transaction(sessions, work)
        return CeilingRun(len(charges), time.monotonic() - started)
    finally:
        await engine.dispose()
