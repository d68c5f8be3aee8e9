"""Usage drawn from grants, in `ledger.charge_usage` once the batch's balances are locked.

Each USAGE row of the batch (in key order) draws from its user's open grants in their order
(higher `priority`, then earlier `expiresAt`, then the older grant) until its credits are
covered; the rest is purchased credits. A grant is open while it has credits left, its expiry is
not posted and its `expiresAt` is after the transaction's start (`now()`). Amounts of usage do
not change: a draw moves no credits, it records where a row's credits came from. Users without
open grants cost the batch one indexed query in all.
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import Integer, Text


class UsageDebit(NamedTuple):
    """A USAGE row just written: its user, stored key, and the credits it charged (>= 0)."""

    user_id: str
    stored_key: str
    credits: int


@dataclass
class _OpenGrant:
    id: str
    remaining: int
    drawn: int = 0


# The same users' balances are locked by the caller, so concurrent batches (and the expiry)
# of a user reach these rows one at a time; the lock is NO KEY, as the UPDATE below needs.
_LOCK_OPEN_GRANTS = text(
    'SELECT id, "userId", remaining FROM "CreditGrant" '
    'WHERE "userId" = ANY(:ids) AND remaining > 0 AND "expiredAt" IS NULL '
    "AND \"expiresAt\" > (now() AT TIME ZONE 'UTC') "
    'ORDER BY "userId", priority DESC, "expiresAt", id FOR NO KEY UPDATE'
).bindparams(bindparam("ids", type_=ARRAY(Text)))
_TRANSACTION_IDS = text(
    'SELECT "idempotencyKey", id FROM "CreditTransaction" WHERE "idempotencyKey" = ANY(:keys)'
).bindparams(bindparam("keys", type_=ARRAY(Text)))
_INSERT_DRAWS = text(
    'INSERT INTO "GrantDraw" ("grantId", "transactionId", amount) '
    "SELECT * FROM unnest(CAST(:grant_ids AS text[]), CAST(:transaction_ids AS text[]), "
    "CAST(:amounts AS int[]))"
).bindparams(
    bindparam("grant_ids", type_=ARRAY(Text)),
    bindparam("transaction_ids", type_=ARRAY(Text)),
    bindparam("amounts", type_=ARRAY(Integer)),
)
_DRAW_DOWN = text(
    'UPDATE "CreditGrant" AS g SET remaining = g.remaining - d.drawn '
    "FROM unnest(CAST(:ids AS text[]), CAST(:drawn AS int[])) AS d(id, drawn) WHERE g.id = d.id"
).bindparams(bindparam("ids", type_=ARRAY(Text)), bindparam("drawn", type_=ARRAY(Integer)))


async def draw_from_grants(session: AsyncSession, debits: Sequence[UsageDebit]) -> None:
    """Record what each debit draws from its user's open grants and draw them down.

    The caller holds the users' balance locks and has written the USAGE rows of `debits`."""
    debits = [d for d in debits if d.credits > 0]
    if not debits:
        return
    rows = await session.execute(_LOCK_OPEN_GRANTS, {"ids": sorted({d.user_id for d in debits})})
    grants: dict[str, list[_OpenGrant]] = defaultdict(list)
    for row in rows:
        grants[row.userId].append(_OpenGrant(row.id, row.remaining))
    if not grants:
        return
    drawing = [d for d in debits if d.user_id in grants]
    rows = await session.execute(_TRANSACTION_IDS, {"keys": [d.stored_key for d in drawing]})
    transaction_ids: dict[str, str] = {row.idempotencyKey: row.id for row in rows}
    draws: list[tuple[str, str, int]] = []
    for debit in drawing:
        owed = debit.credits
        for grant in grants[debit.user_id]:
            take = min(owed, grant.remaining - grant.drawn)
            if take > 0:
                grant.drawn += take
                owed -= take
                draws.append((grant.id, transaction_ids[debit.stored_key], take))
            if owed == 0:
                break
    if not draws:
        return
    grant_ids, row_ids, amounts = zip(*draws, strict=True)
    await session.execute(
        _INSERT_DRAWS,
        {"grant_ids": list(grant_ids), "transaction_ids": list(row_ids), "amounts": list(amounts)},
    )
    touched = [g for user_grants in grants.values() for g in user_grants if g.drawn]
    await session.execute(
        _DRAW_DOWN, {"ids": [g.id for g in touched], "drawn": [g.drawn for g in touched]}
    )
