"""`metering seed` and the platform's Prisma seed, in either order: one purchase, 10,000 credits."""

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.ledger import accounts
from metering.ledger.reconcile import find_violations
from metering.ops.db import create_engine, make_sessionmaker, run_in_transaction
from metering.ops.models import CreditTransaction, TransactionType, User

# What `prisma.user.create` of the seed document sends: the user and its nested purchase in one
# transaction, ids and updatedAt made by the client, no idempotency key.
PLATFORM_SEED = (
    """INSERT INTO "User" (id, email, name, credits, "updatedAt")
       VALUES ('cplatformseeduser00000001', 'test@example.com', 'Test User', 10000, now())""",
    """INSERT INTO "CreditTransaction" (id, "userId", type, amount, description, "stripePaymentId")
       VALUES ('cplatformseedpurchase0001', 'cplatformseeduser00000001', 'PURCHASE', 10000,
               'Initial credit purchase', 'pi_test_123')""",
)


@pytest.fixture
async def engine(migrated_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(migrated_database, pool_size=2)
    yield engine
    await engine.dispose()


async def platform_seed(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        for statement in PLATFORM_SEED:
            await connection.execute(text(statement))


async def our_seed(engine: AsyncEngine) -> bool:
    posted = await run_in_transaction(make_sessionmaker(engine), accounts.seed)
    return posted.created


async def assert_seeded_once(engine: AsyncEngine) -> None:
    async with make_sessionmaker(engine)() as session:
        users = (await session.execute(select(User.id, User.credits))).all()
        purchases = await session.scalar(
            select(func.count())
            .select_from(CreditTransaction)
            .where(CreditTransaction.type == TransactionType.PURCHASE)
        )
        assert await find_violations(session) == []
    assert [credits for _, credits in users] == [10_000]
    assert purchases == 1


async def test_platform_seed_then_ours(engine: AsyncEngine) -> None:
    await platform_seed(engine)
    assert await our_seed(engine) is False
    assert await our_seed(engine) is False
    await assert_seeded_once(engine)


async def test_ours_then_platform_seed(engine: AsyncEngine) -> None:
    assert await our_seed(engine) is True
    assert await our_seed(engine) is False
    # The platform's create then fails on the unique email and writes nothing.
    with pytest.raises(IntegrityError, match="User_email_key"):
        await platform_seed(engine)
    await assert_seeded_once(engine)
