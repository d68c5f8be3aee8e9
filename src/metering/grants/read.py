"""Grants as operators and the API see them."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import Text


@dataclass(frozen=True)
class Grant:
    """A grant: `credits` granted and `remaining` (both in credits, 1 credit = $0.001); times
    in UTC. `expired_at` is set once what was left has been removed."""

    grant_id: str
    user_id: str
    credits: int
    remaining: int
    priority: int
    expires_at: datetime
    expired_at: datetime | None
    reason: str
    source: str
    created_at: datetime


_COLUMNS = (
    'SELECT id, "userId", amount, remaining, priority, "expiresAt", "expiredAt", reason, source, '
    '"createdAt" FROM "CreditGrant" '
)
_BY_ID = text(_COLUMNS + "WHERE id = ANY(:ids) ORDER BY id").bindparams(
    bindparam("ids", type_=ARRAY(Text))
)
_OPEN = text(
    _COLUMNS + 'WHERE "userId" = :user_id AND "expiredAt" IS NULL AND remaining > 0 '
    'ORDER BY priority DESC, "expiresAt", id'
)


async def grants_by_id(session: AsyncSession, grant_ids: Sequence[str]) -> dict[str, Grant]:
    rows = await session.execute(_BY_ID, {"ids": list(grant_ids)})
    return {row.id: _grant(row) for row in rows}


async def open_grants(session: AsyncSession, user_id: str) -> list[Grant]:
    """The user's grants with credits left and not yet expired, in the order usage draws them."""
    return [_grant(row) for row in await session.execute(_OPEN, {"user_id": user_id})]


def _grant(row: Row[Any]) -> Grant:
    return Grant(
        grant_id=row.id,
        user_id=row.userId,
        credits=row.amount,
        remaining=row.remaining,
        priority=row.priority,
        expires_at=_aware(row.expiresAt),
        expired_at=None if row.expiredAt is None else _aware(row.expiredAt),
        reason=row.reason,
        source=row.source,
        created_at=_aware(row.createdAt),
    )


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC)
