"""For information, not the ceiling: our own `charging.charge_usage` on one connection.

The same priced charges as the ceiling (retried calls included), in batches of `batch_size`,
one transaction each, no Redis, no Celery: what the ledger's write costs against the bare
typed insert of `ceiling`.
"""

import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from metering.ledger import charging
from metering.ops.db import create_engine, make_sessionmaker, run_in_transaction


@dataclass(frozen=True)
class LedgerRun:
    rows: int
    seconds: float


async def run(database_url: str, charges: list[charging.UsageCharge], batch_size: int) -> LedgerRun:
    """Charge `charges` in batches of `batch_size`, one transaction each, on one connection."""
    engine = create_engine(database_url, pool_size=1)
    sessions = make_sessionmaker(engine)
    try:
        started = time.monotonic()
        for begin in range(0, len(charges), batch_size):
            batch = charges[begin : begin + batch_size]

            async def work(
                session: AsyncSession, batch: list[charging.UsageCharge] = batch
            ) -> None:
                await charging.charge_usage(session, batch)

            await run_in_transaction(sessions, work)
        return LedgerRun(len({c.event_id for c in charges}), time.monotonic() - started)
    finally:
        await engine.dispose()
