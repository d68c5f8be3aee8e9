"""Expiry: what is left of each grant past its `expiresAt` removed by one ADJUSTMENT, once.

The expiring transaction locks the users' balances first and then their grants, in the order a
usage batch does, so the two never deadlock and never interleave: a batch that started before
the expiry draws first and the expiry removes what it left; a batch that starts after it finds
the grant expired. The ADJUSTMENT is keyed `expiry:<grant id>` and `expiredAt` is set in the same
transaction, so concurrent runs (several beats or workers) post it once: the later run finds the
grant expired once it gets the lock, and would find the key taken if it did not.
"""

from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.types import Text

from metering.ledger import journal
from metering.ops.db import run_in_transaction
from metering.ops.models import TransactionType

USERS_PER_TRANSACTION = 200


@dataclass(frozen=True)
class Expired:
    """A grant expired: `credits` removed from its user (what was left, >= 0)."""

    grant_id: str
    user_id: str
    credits: int


_NOW = "(now() AT TIME ZONE 'UTC')"
_DUE_USERS = text(
    'SELECT DISTINCT "userId" FROM "CreditGrant" '
    f'WHERE "expiredAt" IS NULL AND "expiresAt" <= {_NOW} ORDER BY "userId" LIMIT :limit'
)
_LOCK_USERS = text(
    'SELECT id FROM "User" WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE'
).bindparams(bindparam("ids", type_=ARRAY(Text)))
_LOCK_DUE_GRANTS = text(
    'SELECT id, "userId", remaining, reason FROM "CreditGrant" '
    f'WHERE "userId" = ANY(:ids) AND "expiredAt" IS NULL AND "expiresAt" <= {_NOW} '
    "ORDER BY id FOR NO KEY UPDATE"
).bindparams(bindparam("ids", type_=ARRAY(Text)))
_MARK_EXPIRED = text(
    f'UPDATE "CreditGrant" SET remaining = 0, "expiredAt" = {_NOW} WHERE id = ANY(:ids)'
).bindparams(bindparam("ids", type_=ARRAY(Text)))


async def expire_due_grants(
    session: AsyncSession, limit: int = USERS_PER_TRANSACTION
) -> tuple[list[Expired], bool]:
    """Expire, in the caller's transaction, the due grants of up to `limit` users; returns
    them, and whether more users may have due grants."""
    user_ids = list(await session.scalars(_DUE_USERS, {"limit": limit}))
    if not user_ids:
        return [], False
    await session.execute(_LOCK_USERS, {"ids": user_ids})
    due = (await session.execute(_LOCK_DUE_GRANTS, {"ids": user_ids})).all()
    postings = [
        journal.Posting(
            user_id=row.userId,
            type=TransactionType.ADJUSTMENT,
            amount=-row.remaining,
            description=f"Grant expired: {row.reason}",
            idempotency_key=row.id,
            metadata={"grantId": row.id},
            kind=journal.KeyKind.EXPIRY,
        )
        for row in due
        if row.remaining > 0
    ]
    if postings:
        await journal.post_many(session, postings)
    if due:
        await session.execute(_MARK_EXPIRED, {"ids": [row.id for row in due]})
    expired = [Expired(row.id, row.userId, row.remaining) for row in due]
    return expired, len(user_ids) == limit


async def expire_all_due(
    sessions: async_sessionmaker[AsyncSession], limit: int = USERS_PER_TRANSACTION
) -> list[Expired]:
    """Expire every due grant, `limit` users per transaction (each retried whole on a deadlock
    or a lost connection); returns what this run expired."""
    expired: list[Expired] = []
    more = True
    while more:
        batch, more = await run_in_transaction(
            sessions, lambda session: expire_due_grants(session, limit)
        )
        expired += batch
    return expired
