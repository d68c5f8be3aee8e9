"""The ledger's health for `/metrics`: the result of the last `metering reconcile`, which the
command records in Redis (`redis_keys.reconcile_result`) so that every web host exports it, and the
stored Stripe events not yet processed, counted in PostgreSQL at scrape time."""

import json
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.ops import redis_keys
from metering.ops.metrics import LedgerStatus
from metering.ops.redis_client import AsyncRedis

_UNPROCESSED = text(
    """
    SELECT COALESCE(outcome, 'pending') AS outcome, count(*) AS events,
           EXTRACT(EPOCH FROM (now() AT TIME ZONE 'UTC') - min("receivedAt")) AS oldest_s
    FROM "StripeEvent" WHERE "processedAt" IS NULL GROUP BY 1
    """
)


async def record_reconcile(redis: AsyncRedis, prefix: str, violations: int) -> None:
    """Keep the result of a reconcile that just ran: its count of violations and the time."""
    document = {"violations": violations, "checked_at": time.time()}
    await redis.set(redis_keys.reconcile_result(prefix), json.dumps(document))


async def read_status(redis: AsyncRedis | None, session: AsyncSession, prefix: str) -> LedgerStatus:
    """One GET and one indexed query (`StripeEvent_processedAt_receivedAt_idx`). Without Redis
    (`None`) the reconcile result is unknown and left out; the Stripe counts are still read."""
    raw = None if redis is None else await redis.get(redis_keys.reconcile_result(prefix))
    recorded = json.loads(raw) if raw is not None else {}
    rows = (await session.execute(_UNPROCESSED)).all()
    return LedgerStatus(
        reconcile_violations=recorded.get("violations"),
        reconciled_at_s=recorded.get("checked_at"),
        stripe_unprocessed={row.outcome: int(row.events) for row in rows},
        stripe_oldest_s={row.outcome: max(0.0, float(row.oldest_s)) for row in rows},
    )
