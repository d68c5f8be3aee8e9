"""Grants for tests: give one, charge usage against it, read what is left and what was drawn."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.grants.post import GrantRequest, post_grant
from metering.grants.read import Grant, grants_by_id
from metering.ledger import charging, journal
from metering.ledger.reconcile import find_violations
from metering.ops.db import session_scope
from metering.ops.models import CreditTransaction, GrantDraw, User
from tests.factories import CALL, create_experiment, create_user, unique

Sessions = async_sessionmaker[AsyncSession]


def request(
    credits: int, *, days: float = 30, priority: int = 0, key: str | None = None
) -> GrantRequest:
    return GrantRequest(
        credits=credits,
        expires_at=datetime.now(UTC) + timedelta(days=days),
        reason="trial",
        key=key or unique("grant"),
        priority=priority,
    )


async def user_with_experiment(sessions: Sessions, purchased: int = 0) -> tuple[str, str]:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, purchased)
        return user_id, await create_experiment(session, user_id)


async def give(
    sessions: Sessions, user_id: str, credits: int, *, days: float = 30, priority: int = 0
) -> str:
    async with session_scope(sessions) as session:
        posted = await post_grant(session, user_id, request(credits, days=days, priority=priority))
        return posted.grant.grant_id


async def charge(sessions: Sessions, experiment_id: str, credits: int) -> str:
    """One batch of one call costing `credits`; the id of its USAGE row."""
    event_id = unique("evt")
    usage = charging.UsageCharge(event_id, experiment_id, Decimal(credits), CALL)
    async with session_scope(sessions) as session:
        outcome = await charging.charge_usage(session, [usage])
        assert outcome.charged == [event_id]
        key = journal.stored_key(journal.KeyKind.USAGE, event_id)
        row_id = await session.scalar(
            select(CreditTransaction.id).where(CreditTransaction.idempotency_key == key)
        )
        assert row_id is not None
        return row_id


async def grant(sessions: Sessions, grant_id: str) -> Grant:
    async with session_scope(sessions) as session:
        return (await grants_by_id(session, [grant_id]))[grant_id]


async def drawn(sessions: Sessions, grant_id: str) -> int:
    async with session_scope(sessions) as session:
        rows = await session.scalars(select(GrantDraw.amount).where(GrantDraw.grant_id == grant_id))
        return sum(rows)


async def credits_of(sessions: Sessions, user_id: str) -> int:
    async with session_scope(sessions) as session:
        user = await session.get(User, user_id)
        assert user is not None
        return user.credits


async def expiry_rows(sessions: Sessions, grant_id: str) -> list[int]:
    """The amounts of the grant's expiry ADJUSTMENT rows (one at most)."""
    async with session_scope(sessions) as session:
        key = journal.stored_key(journal.KeyKind.EXPIRY, grant_id)
        return list(
            await session.scalars(
                select(CreditTransaction.amount).where(CreditTransaction.idempotency_key == key)
            )
        )


async def make_due(sessions: Sessions, grant_id: str, at: datetime | None = None) -> None:
    """Time passes: the grant's expiry moves to `at` (default: a second ago)."""
    moment = at or datetime.now(UTC) - timedelta(seconds=1)
    async with session_scope(sessions) as session:
        await session.execute(
            text('UPDATE "CreditGrant" SET "expiresAt" = :at WHERE id = :id'),
            {"at": moment.astimezone(UTC).replace(tzinfo=None), "id": grant_id},
        )


async def assert_reconciled(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        assert await find_violations(session) == []
