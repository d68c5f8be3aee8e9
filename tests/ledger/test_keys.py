"""One key space per kind of posting: usage, purchase, clawback and operator keys never collide,
and a key posted again for anything but the same posting is refused."""

import dataclasses

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ledger import journal
from metering.ledger.reconcile import find_violations
from metering.ops.db import session_scope
from metering.ops.models import CreditTransaction, MAACExperiment, TransactionType, User
from tests.factories import create_experiment, create_user, unique
from tests.usage_data import charge_events, event

Sessions = async_sessionmaker[AsyncSession]


async def owned_experiment(sessions: Sessions, credits: int = 1_000) -> tuple[str, str]:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, credits)
        return user_id, await create_experiment(session, user_id)


async def state(sessions: Sessions, user_id: str, experiment_id: str) -> tuple[int, int]:
    """The user's balance and the experiment's creditsUsed."""
    async with session_scope(sessions) as session:
        user = await session.get(User, user_id)
        experiment = await session.get(MAACExperiment, experiment_id)
        assert user is not None
        assert experiment is not None
        return user.credits, experiment.credits_used


async def assert_reconciled(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        assert await find_violations(session) == []


def refund(user_id: str, experiment_id: str, key: str, credits: int = 40) -> journal.Posting:
    """An operator's refund, as `metering refund` posts it."""
    return journal.Posting(
        user_id=user_id,
        type=TransactionType.REFUND,
        amount=credits,
        description="refund",
        idempotency_key=key,
        metadata={"experimentId": experiment_id, "reason": "outage", "operator": "alice"},
        experiment_id=experiment_id,
    )


async def test_a_refund_keyed_by_a_charged_event_id_is_posted(sessions: Sessions) -> None:
    """Usage first, then a refund whose key is that event id: the refund is a REFUND of its
    own, never answered with the USAGE row."""
    user_id, experiment_id = await owned_experiment(sessions)
    document = event(experiment_id)
    async with session_scope(sessions) as session:
        outcome, _ = await charge_events(session, [document])
    charged = -outcome.amounts[document["event_id"]]
    async with session_scope(sessions) as session:
        posted = await journal.post(session, refund(user_id, experiment_id, document["event_id"]))
    assert (posted.created, posted.type, posted.amount) == (True, TransactionType.REFUND, 40)
    assert await state(sessions, user_id, experiment_id) == (1_000 - charged + 40, charged)
    await assert_reconciled(sessions)


async def test_usage_whose_event_id_a_refund_took_first_is_charged(sessions: Sessions) -> None:
    """A refund keyed by an event id, then that event: the event is charged, not a duplicate."""
    user_id, experiment_id = await owned_experiment(sessions)
    document = event(experiment_id)
    async with session_scope(sessions) as session:
        await journal.post(session, refund(user_id, experiment_id, document["event_id"]))
    async with session_scope(sessions) as session:
        outcome, _ = await charge_events(session, [document])
    assert (outcome.charged, outcome.duplicates) == ([document["event_id"]], [])
    charged = -outcome.amounts[document["event_id"]]
    assert charged > 0
    assert await state(sessions, user_id, experiment_id) == (1_000 + 40 - charged, charged)
    await assert_reconciled(sessions)


async def test_one_caller_key_is_four_postings_of_four_kinds(sessions: Sessions) -> None:
    """The same key as usage, purchase, clawback and operator posting: four rows, each stored in
    its kind's key space, each moving the balance once; posted again, none moves it again."""
    user_id, experiment_id = await owned_experiment(sessions, credits=0)
    key = unique("shared")
    postings = [
        journal.Posting(user_id, TransactionType.PURCHASE, 500, "p", key, stripe_payment_id="pi_1"),
        journal.Posting(
            user_id, TransactionType.ADJUSTMENT, -50, "c", key, stripe_payment_id="pi_1"
        ),
        journal.Posting(user_id, TransactionType.ADJUSTMENT, 7, "o", key),
    ]
    for _ in range(2):
        async with session_scope(sessions) as session:
            posted = await journal.post_many(session, postings)
            outcome, _ = await charge_events(session, [event(experiment_id, event_id=key)])
    assert [p.created for p in posted] == [False, False, False]
    assert outcome.duplicates == [key]
    async with session_scope(sessions) as session:
        stored = set(
            await session.scalars(
                select(CreditTransaction.idempotency_key).where(
                    CreditTransaction.user_id == user_id
                )
            )
        )
    assert stored == {f"{kind}:{key}" for kind in ("purchase", "clawback", "operator", "usage")}
    balance, used = await state(sessions, user_id, experiment_id)
    assert used > 0
    assert balance == 500 - 50 + 7 - used
    await assert_reconciled(sessions)


@pytest.mark.parametrize("changed", ["amount", "type", "user_id", "experiment_id"])
async def test_a_key_posted_again_as_another_posting_is_refused(
    sessions: Sessions, changed: str
) -> None:
    """A refund's key posted again with another amount, type, user or experiment: refused with a
    clear error, nothing moved; the refund posted again as it was: its first result."""
    user_id, experiment_id = await owned_experiment(sessions)
    other_user, other_experiment = await owned_experiment(sessions)
    key = unique("ticket")
    first = refund(user_id, experiment_id, key)
    async with session_scope(sessions) as session:
        posted = await journal.post(session, first)
    other = {
        "amount": 41,
        "type": TransactionType.ADJUSTMENT,
        "user_id": other_user,
        "experiment_id": other_experiment,
    }
    again = dataclasses.replace(first, **{changed: other[changed]})
    with pytest.raises(journal.KeyConflict) as refused:
        async with session_scope(sessions) as session:
            await journal.post(session, again)
    assert str(refused.value) == (
        f"idempotency key 'operator:{key}' was already posted as REFUND of +40 credits to user "
        f"{user_id} for experiment {experiment_id} (transaction {posted.transaction_id}); "
        f"refusing {again.describe()} under the same key"
    )
    async with session_scope(sessions) as session:
        retried = await journal.post(session, first)
    assert (retried.created, retried.transaction_id) == (False, posted.transaction_id)
    assert (await state(sessions, user_id, experiment_id))[0] == 1_040
    assert (await state(sessions, other_user, other_experiment))[0] == 1_000
    await assert_reconciled(sessions)


async def test_two_postings_of_one_key_in_one_call_must_be_the_same(sessions: Sessions) -> None:
    user_id, _ = await owned_experiment(sessions)
    key = unique("k")
    same = journal.Posting(user_id, TransactionType.ADJUSTMENT, 5, "a", key)
    async with session_scope(sessions) as session:
        first, second = await journal.post_many(session, [same, same])
    assert first == second
    with pytest.raises(journal.KeyConflict, match="earlier in this call"):
        async with session_scope(sessions) as session:
            await journal.post_many(
                session,
                [
                    journal.Posting(user_id, TransactionType.ADJUSTMENT, 6, "a", unique("k")),
                    journal.Posting(user_id, TransactionType.ADJUSTMENT, 6, "a", key + "-b"),
                    journal.Posting(user_id, TransactionType.ADJUSTMENT, -6, "a", key + "-b"),
                ],
            )
    async with session_scope(sessions) as session:
        user = await session.get(User, user_id)
        assert user is not None
        assert user.credits == 1_005
    await assert_reconciled(sessions)


async def test_usage_refused_where_a_usage_posting_took_its_key(sessions: Sessions) -> None:
    """A USAGE posting without an experiment under an event's id, then that event: the event is
    refused (the drain dead-letters it), not answered with the posting, and nothing moves."""
    user_id, experiment_id = await owned_experiment(sessions)
    document = event(experiment_id)
    async with session_scope(sessions) as session:
        await journal.post(
            session,
            journal.Posting(user_id, TransactionType.USAGE, -3, "manual", document["event_id"]),
        )
    with pytest.raises(journal.KeyConflict, match=document["event_id"]):
        async with session_scope(sessions) as session:
            await charge_events(session, [document])
    assert await state(sessions, user_id, experiment_id) == (997, 0)
    await assert_reconciled(sessions)
