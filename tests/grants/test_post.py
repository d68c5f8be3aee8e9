"""A grant posts once per key; the same key with other values is a conflict."""

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

from metering.grants.post import InvalidGrant, post_grant
from metering.ledger import journal
from metering.ops.db import session_scope
from metering.ops.models import CreditGrant, CreditTransaction, TransactionType
from tests.grants.helpers import (
    Sessions,
    assert_reconciled,
    credits_of,
    make_due,
    request,
    user_with_experiment,
)
from tests.support import wait_until_blocked_on_a_lock


async def rows_of(sessions: Sessions, user_id: str) -> tuple[int, int]:
    """The user's ADJUSTMENT rows and grants."""
    async with session_scope(sessions) as session:
        adjustments = await session.scalar(
            select(func.count()).where(CreditTransaction.user_id == user_id)
        )
        grants = await session.scalar(select(func.count()).where(CreditGrant.user_id == user_id))
        return adjustments or 0, grants or 0


async def test_a_grant_is_a_positive_adjustment_naming_it(sessions: Sessions) -> None:
    user_id, _ = await user_with_experiment(sessions)
    asked = request(250, priority=3)
    async with session_scope(sessions) as session:
        posted = await post_grant(session, user_id, asked)
    assert posted.created
    assert (posted.grant.credits, posted.grant.remaining, posted.grant.priority) == (250, 250, 3)
    assert posted.grant.expires_at == asked.expires_at_utc().replace(tzinfo=UTC)
    async with session_scope(sessions) as session:
        row = await session.get(CreditTransaction, posted.grant.grant_id)
    assert row is not None
    assert (row.type, row.amount) == (TransactionType.ADJUSTMENT, 250)
    assert row.idempotency_key == f"grant:{asked.key}"
    assert row.metadata_ is not None
    assert (row.metadata_["grant"], row.metadata_["reason"]) == (asked.key, "trial")
    assert row.metadata_["priority"] == 3
    assert await credits_of(sessions, user_id) == 250


async def test_the_same_key_twice_posts_once(sessions: Sessions) -> None:
    user_id, _ = await user_with_experiment(sessions)
    asked = request(100)
    async with session_scope(sessions) as session:
        first = await post_grant(session, user_id, asked)
    async with session_scope(sessions) as session:
        again = await post_grant(session, user_id, asked)
    assert not again.created
    assert again.grant == first.grant
    assert await rows_of(sessions, user_id) == (1, 1)
    assert await credits_of(sessions, user_id) == 100


@pytest.mark.parametrize(
    "change",
    [
        {"credits": 101},
        {"priority": 1},
        {"reason": "promotion"},
        {"expires_at": datetime.now(UTC) + timedelta(days=31)},
    ],
)
async def test_the_same_key_with_other_values_is_a_conflict(
    sessions: Sessions, change: dict[str, Any]
) -> None:
    user_id, _ = await user_with_experiment(sessions)
    asked = request(100)
    async with session_scope(sessions) as session:
        await post_grant(session, user_id, asked)
    with pytest.raises(journal.KeyConflict) as refused:
        async with session_scope(sessions) as session:
            await post_grant(session, user_id, replace(asked, **change))
    assert refused.value.code == "idempotency_key_conflict"
    assert await rows_of(sessions, user_id) == (1, 1)
    assert await credits_of(sessions, user_id) == 100


async def test_a_grant_key_never_meets_an_operators_key(sessions: Sessions) -> None:
    user_id, _ = await user_with_experiment(sessions)
    asked = request(100)
    async with session_scope(sessions) as session:
        await post_grant(session, user_id, asked)
        adjusted = await journal.post(
            session,
            journal.Posting(user_id, TransactionType.ADJUSTMENT, 100, "x", asked.key),
        )
    assert adjusted.created
    assert await credits_of(sessions, user_id) == 200


async def test_the_same_key_for_another_user_is_a_conflict(sessions: Sessions) -> None:
    first_user, _ = await user_with_experiment(sessions)
    other_user, _ = await user_with_experiment(sessions)
    asked = request(100)
    async with session_scope(sessions) as session:
        await post_grant(session, first_user, asked)
    with pytest.raises(journal.KeyConflict):
        async with session_scope(sessions) as session:
            await post_grant(session, other_user, asked)
    assert await credits_of(sessions, other_user) == 0


@pytest.mark.parametrize(
    "change",
    [
        {"credits": 0},
        {"credits": -5},
        {"priority": -1},
        {"priority": 1001},
        {"reason": " "},
        {"key": ""},
        {"expires_at": datetime.now(UTC) - timedelta(seconds=1)},
    ],
)
async def test_a_grant_out_of_bounds_is_refused_and_posts_nothing(
    sessions: Sessions, change: dict[str, Any]
) -> None:
    user_id, _ = await user_with_experiment(sessions)
    with pytest.raises(InvalidGrant):
        async with session_scope(sessions) as session:
            await post_grant(session, user_id, replace(request(100), **change))
    assert await rows_of(sessions, user_id) == (0, 0)
    await assert_reconciled(sessions)


async def test_a_repeat_after_the_expiry_returns_the_grant(sessions: Sessions) -> None:
    user_id, _ = await user_with_experiment(sessions)
    asked = request(100)
    async with session_scope(sessions) as session:
        first = await post_grant(session, user_id, asked)
    # Time passes: the grant's expiry is behind us when its grant is asked for again.
    passed = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    await make_due(sessions, first.grant.grant_id, at=passed)
    async with session_scope(sessions) as session:
        again = await post_grant(session, user_id, replace(asked, expires_at=passed))
    assert not again.created
    assert again.grant.grant_id == first.grant.grant_id
    assert await rows_of(sessions, user_id) == (1, 1)


async def test_the_same_key_twice_at_once_gives_one_grant(sessions: Sessions) -> None:
    user_id, _ = await user_with_experiment(sessions)
    asked = request(100)

    async def give_it() -> bool:
        async with session_scope(sessions) as session:
            return (await post_grant(session, user_id, asked)).created

    async with sessions() as holder, holder.begin():
        # Both postings queue for the user's balance behind this lock, then race for the key.
        await holder.execute(
            text('SELECT 1 FROM "User" WHERE id = :id FOR NO KEY UPDATE'), {"id": user_id}
        )
        both = [asyncio.ensure_future(give_it()) for _ in range(2)]
        await wait_until_blocked_on_a_lock(sessions, backends=2)
    assert sorted(await asyncio.gather(*both)) == [False, True]
    assert await rows_of(sessions, user_id) == (1, 1)
    assert await credits_of(sessions, user_id) == 100
