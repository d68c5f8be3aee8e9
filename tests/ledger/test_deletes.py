"""The platform deletes users and experiments: no event ever counts twice, and reconcile tells
such deletes apart from violations.

Each test runs on a private database: deleting a user removes its transactions, so the shared
run database's books would show it to every later test's reconcile.
"""

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ledger import charging
from metering.ledger.reconcile import Deletion, Violation, find_deletions, find_violations
from metering.ops.db import create_engine, make_sessionmaker, session_scope
from metering.ops.models import MAACExperiment
from tests.factories import create_experiment, create_user
from tests.usage_data import charge_events, event

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def sessions(migrated_database: str) -> AsyncIterator[Sessions]:
    engine = create_engine(migrated_database, pool_size=2)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def books(sessions: Sessions) -> tuple[list[Violation], list[Deletion]]:
    async with session_scope(sessions) as session:
        return await find_violations(session), await find_deletions(session)


async def credits_used(sessions: Sessions, experiment_id: str) -> int:
    async with session_scope(sessions) as session:
        experiment = await session.get(MAACExperiment, experiment_id)
        assert experiment is not None
        return experiment.credits_used


async def platform(sessions: Sessions, statement: str, **params: str) -> None:
    """A statement as the platform's Prisma client runs it, in a transaction of its own."""
    async with session_scope(sessions) as session:
        await session.execute(text(statement), params)


async def charge(sessions: Sessions, documents: list[dict[str, object]]) -> charging.UsageOutcome:
    async with session_scope(sessions) as session:
        outcome, _ = await charge_events(session, documents)
        return outcome


async def test_a_deleted_owner_never_makes_an_event_count_twice(sessions: Sessions) -> None:
    """The platform deletes a user with charged usage: its transactions cascade away, its
    experiment keeps creditsUsed. Reconcile reports the experiment as owner_deleted, not as a
    violation; its events redelivered are duplicates; later usage is counted unbilled; and a
    real violation is still found."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 10_000)
        experiment_id = await create_experiment(session, user_id)
        bystander = await create_user(session, 50)
    documents = [event(experiment_id, n) for n in range(6)]
    charged = await charge(sessions, documents)
    used = await credits_used(sessions, experiment_id)
    assert len(charged.charged) == 6
    assert used > 0

    await platform(sessions, 'DELETE FROM "User" WHERE id = :id', id=user_id)
    owner_deleted = Deletion("owner_deleted", experiment_id, user_id, 6, used)
    assert await books(sessions) == ([], [owner_deleted])

    redelivered = await charge(sessions, documents[:3])
    assert redelivered.duplicates == [d["event_id"] for d in documents[:3]]
    assert (redelivered.charged, redelivered.unbilled) == ([], [])
    assert await credits_used(sessions, experiment_id) == used

    later = await charge(sessions, [event(experiment_id, 7)])
    assert len(later.unbilled) == 1
    assert await credits_used(sessions, experiment_id) == used - later.amounts[later.unbilled[0]]
    assert await books(sessions) == ([], [owner_deleted])

    await platform(sessions, 'UPDATE "User" SET credits = credits + 1 WHERE id = :id', id=bystander)
    await platform(
        sessions,
        'UPDATE "MAACExperiment" SET "creditsUsed" = "creditsUsed" + 1 WHERE id = :id',
        id=experiment_id,
    )
    violations, deletions = await books(sessions)
    assert deletions == [owner_deleted]
    assert {(v.kind, v.subject_id) for v in violations} == {
        ("user", bystander),
        ("experiment", experiment_id),
    }
    (experiment_violation,) = [v for v in violations if v.kind == "experiment"]
    assert f"({used} of them charged to users deleted since)" in experiment_violation.detail


async def test_an_experiment_reassigned_after_its_owner_was_deleted_reconciles(
    sessions: Sessions,
) -> None:
    """The platform gives the experiment of a deleted user to another user: the old usage stays
    counted (and reported apart), the new one is charged to the new owner."""
    async with session_scope(sessions) as session:
        first = await create_user(session, 1_000)
        second = await create_user(session, 1_000)
        experiment_id = await create_experiment(session, first)
    old = [event(experiment_id, n) for n in range(3)]
    await charge(sessions, old)
    used = await credits_used(sessions, experiment_id)
    await platform(sessions, 'DELETE FROM "User" WHERE id = :id', id=first)
    await platform(
        sessions,
        'UPDATE "MAACExperiment" SET "userId" = :user WHERE id = :id',
        user=second,
        id=experiment_id,
    )
    outcome = await charge(sessions, [*old, event(experiment_id, 4)])
    assert outcome.duplicates == [d["event_id"] for d in old]
    assert len(outcome.charged) == 1
    assert await books(sessions) == ([], [Deletion("owner_deleted", experiment_id, first, 3, used)])


async def test_a_deleted_experiment_is_reported_apart_and_its_events_stay_recorded(
    sessions: Sessions,
) -> None:
    """The platform deletes an experiment with charged usage: its USAGE rows stay on the
    owner's ledger (the balance still reconciles), its events redelivered are not charged, and
    reconcile reports it as experiment_deleted."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_000)
        experiment_id = await create_experiment(session, user_id)
    documents = [event(experiment_id, n) for n in range(2)]
    async with session_scope(sessions) as session:
        _, charges = await charge_events(session, documents)
    used = await credits_used(sessions, experiment_id)
    await platform(sessions, 'DELETE FROM "MAACExperiment" WHERE id = :id', id=experiment_id)

    async with session_scope(sessions) as session:
        again = await charging.charge_usage(session, charges)
    assert again.unknown_experiments == [d["event_id"] for d in documents]
    assert again.charged == []
    assert await books(sessions) == (
        [],
        [Deletion("experiment_deleted", experiment_id, None, 2, used)],
    )
