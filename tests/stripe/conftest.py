"""Every Stripe test leaves the ledger reconciled."""

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ledger.reconcile import find_violations
from metering.ops.db import session_scope
from tests.factories import create_user


@pytest.fixture(autouse=True)
async def reconciled(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[None]:
    yield
    async with session_scope(sessions) as session:
        assert await find_violations(session) == []


@pytest.fixture
async def user_id(sessions: async_sessionmaker[AsyncSession]) -> str:
    """A new user without credits."""
    async with session_scope(sessions) as session:
        return await create_user(session)
