"""The ledger at its edges: lost commit replies, values PostgreSQL refuses, races with the
platform, and batches that share keys.

Tests that leave the books deliberately inconsistent run on a private database
(`migrated_database`) so the shared run database stays reconcilable for the other tests.
"""

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.errors import PermanentError
from metering.ledger import accounts, charging, journal
from metering.ledger.reconcile import find_violations
from metering.ops.db import create_engine, make_sessionmaker, run_in_transaction, session_scope
from metering.ops.models import (
    CreditTransaction,
    MAACExperiment,
    TransactionType,
    UnbilledUsage,
    User,
)
from metering.usage.event import parse_event
from tests.factories import CALL, create_experiment, create_user, unique
from tests.support import wait_until_blocked_on_a_lock

Sessions = async_sessionmaker[AsyncSession]


# --------------------------------------------------------------------------------------------
# helpers


async def credits_of(sessions: Sessions, user_id: str) -> int:
    async with session_scope(sessions) as session:
        user = await session.get(User, user_id)
        assert user is not None
        return user.credits


def usage(
    experiment_id: str,
    exact: str | Decimal,
    event_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> charging.UsageCharge:
    return charging.UsageCharge(
        event_id=event_id or unique("evt"),
        experiment_id=experiment_id,
        exact_credits=Decimal(exact),
        call=CALL,
        event_metadata=metadata,
    )


async def charge_alone(sessions: Sessions, charge: charging.UsageCharge) -> charging.UsageOutcome:
    """Charge one event in a transaction of its own."""
    async with session_scope(sessions) as session:
        return await charging.charge_usage(session, [charge])


async def charge_behind(
    sessions: Sessions, charge: charging.UsageCharge, statement: str, params: dict[str, str]
) -> tuple[charging.UsageOutcome | BaseException, str]:
    """Charge `charge` while another transaction that ran `statement` holds its locks, and let
    that one commit once the charge waits. Returns the charge's outcome (or error) and the
    statement it was waiting in."""
    async with sessions() as holder:
        await holder.begin()
        await holder.execute(text(statement), params)
        task = asyncio.create_task(charge_alone(sessions, charge))
        await wait_until_blocked_on_a_lock(sessions)
        async with session_scope(sessions) as observer:
            waiting = await observer.scalar(
                text(
                    "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            )
        await holder.commit()
        (result,) = await asyncio.gather(task, return_exceptions=True)
    return result, waiting


async def error_of(awaitable: Any) -> BaseException:
    """The exception `awaitable` raises (the test fails if it raises none)."""
    try:
        await awaitable
    except Exception as error:
        return error
    raise AssertionError("expected an error, got none")


@pytest.fixture
async def private_sessions(migrated_database: str) -> AsyncIterator[Sessions]:
    """Sessions on a private database: for tests that leave the books inconsistent on purpose."""
    engine = create_engine(migrated_database, pool_size=4)
    yield make_sessionmaker(engine)
    await engine.dispose()


# --------------------------------------------------------------------------------------------
# 1. a retry after a lost COMMIT reply finds the first attempt's rows


class _CommitAckLost(AsyncSession):
    """A session whose first COMMIT succeeds on the server but whose reply never arrives."""

    lose_next_ack = True

    def begin(self) -> Any:
        real = super().begin()

        class _Scope:
            async def __aenter__(self) -> Any:
                return await real.__aenter__()

            async def __aexit__(self, *exc_info: Any) -> Any:
                await real.__aexit__(*exc_info)
                if exc_info[0] is None and _CommitAckLost.lose_next_ack:
                    _CommitAckLost.lose_next_ack = False
                    # What asyncpg reports when the socket dies after COMMIT reached the server.
                    raise ConnectionResetError("connection lost while waiting for COMMIT's reply")
                return None

        return _Scope()


async def test_operator_adjustment_is_posted_once_when_the_commit_reply_is_lost(
    sessions: Sessions, engine: Any
) -> None:
    """The COMMIT succeeded but its reply was lost, so run_in_transaction runs the work again:
    the key, made once before the first attempt, finds the first row."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100)

    _CommitAckLost.lose_next_ack = True
    flaky: Sessions = async_sessionmaker(engine, class_=_CommitAckLost, expire_on_commit=False)

    key = unique("adjustment")  # made once, before any retry, as the CLI does

    async def work(session: AsyncSession) -> journal.PostedTransaction:
        return await accounts.adjust_user(session, user_id, 5, "goodwill", key, "alice")

    await run_in_transaction(flaky, work)
    async with session_scope(sessions) as session:
        adjustments = await session.scalar(
            select(func.count()).where(
                CreditTransaction.user_id == user_id,
                CreditTransaction.type == TransactionType.ADJUSTMENT,
            )
        )
    assert await credits_of(sessions, user_id) == 105, "the +5 adjustment was applied twice"
    assert adjustments == 1


# --------------------------------------------------------------------------------------------
# 2. input that can never succeed is a PermanentError, never retried


async def test_usage_amount_beyond_int32_is_refused_permanently_not_retried(
    sessions: Sessions,
) -> None:
    """A usage cost too large for an INTEGER amount is refused as invalid, so the drain can
    isolate and dead-letter that one event instead of failing its batch on every delivery."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100)
        experiment_id = await create_experiment(session, user_id)

    async def work(session: AsyncSession) -> charging.UsageOutcome:
        return await charging.charge_usage(session, [usage(experiment_id, str(2**31 + 5))])

    error = await error_of(run_in_transaction(sessions, work, attempts=2))
    assert isinstance(error, PermanentError), (
        f"expected a PermanentError (InvalidAmount/BalanceOverflow), got {error!r}"
    )


async def test_post_many_whose_summed_delta_exceeds_int32_while_the_balance_fits(
    sessions: Sessions,
) -> None:
    """Each amount and the final balance fit INTEGER; the per-user sum of the batch does not,
    and must not need to."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session)
        await journal.post(
            session,
            journal.Posting(user_id, TransactionType.ADJUSTMENT, -(2**31), "debt", unique("adj")),
        )
    async with session_scope(sessions) as session:
        await journal.post_many(
            session,
            [
                journal.Posting(user_id, TransactionType.PURCHASE, 2**31 - 1, "p", unique("p")),
                journal.Posting(user_id, TransactionType.PURCHASE, 1, "p", unique("p")),
            ],
        )
    assert await credits_of(sessions, user_id) == 0


async def test_usage_metadata_with_a_nul_character_is_a_permanent_refusal(
    sessions: Sessions,
) -> None:
    """Metadata holding "\\u0000" is valid JSON but not valid jsonb: the ledger refuses it as a
    PermanentError, so the event is quarantined instead of poisoning its batch."""
    event = parse_event(
        json.dumps(
            {
                "event_id": "e1",
                "experiment_id": "x1",
                "provider": "openai",
                "model": "gpt-4o-mini",
                "input_tokens": 1,
                "output_tokens": 1,
                "occurred_at": "2025-06-01T12:00:00Z",
                "metadata": {"note": "a\u0000b"},
            }
        )
    )
    assert event.metadata == {"note": "a\x00b"}  # the event schema accepts it

    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100)
        experiment_id = await create_experiment(session, user_id)
    charge = usage(experiment_id, "1", metadata=event.metadata)

    async def work(session: AsyncSession) -> charging.UsageOutcome:
        return await charging.charge_usage(session, [charge])

    error = await error_of(run_in_transaction(sessions, work, attempts=1))
    assert isinstance(error, PermanentError), f"got {error!r}"


async def test_usage_metadata_is_stored_as_given_beyond_64_bit_integers(
    sessions: Sessions,
) -> None:
    """Event metadata may hold any JSON: integers past 64 bits, non-ASCII text, nesting. The row
    keeps every value exactly."""
    metadata = {"big": 2**70, "negative": -(2**65), "text": "café ✓", "nested": [{"x": 1.5}]}
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100)
        experiment_id = await create_experiment(session, user_id)
    charge = usage(experiment_id, "1", metadata=metadata)
    async with session_scope(sessions) as session:
        outcome = await charging.charge_usage(session, [charge])
    assert outcome.charged == [charge.event_id]
    async with session_scope(sessions) as session:
        stored = await session.scalar(
            text('SELECT metadata FROM "UsageCall" WHERE "eventId" = :id'),
            {"id": charge.event_id},
        )
    assert stored == metadata


@pytest.mark.parametrize("exact", ["NaN", "Infinity", "sNaN"])
async def test_non_finite_usage_cost_is_an_invalid_amount(sessions: Sessions, exact: str) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100)
        experiment_id = await create_experiment(session, user_id)

    async def charge_it() -> None:
        async with session_scope(sessions) as session:
            await charging.charge_usage(session, [usage(experiment_id, exact)])

    error = await error_of(charge_it())
    assert isinstance(error, journal.InvalidAmount), f"got {error!r}"


# --------------------------------------------------------------------------------------------
# 3. races between reading experiment owners (unlocked) and locking


@pytest.mark.parametrize(
    ("deleted", "waits_in", "retry_finds"),
    [
        ("User", 'SELECT id FROM "User"', "unbilled"),
        ("MAACExperiment", 'SELECT id, "userId", "creditsUsed"', "unknown_experiments"),
    ],
)
async def test_a_deletion_while_a_batch_waits_to_lock_is_transient(
    sessions: Sessions, deleted: str, waits_in: str, retry_finds: str
) -> None:
    """charge_usage reads E -> U without a lock, then waits to lock U (held against deletion) or
    E, held by a transaction deleting U (ON DELETE SET NULL updates E) or E. Once that commits,
    the batch is retried (OwnerChanged), not dead-lettered; the retry records the event as
    UnbilledUsage (U gone) or reports its experiment as unknown (E gone), and charges nothing."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session)
        experiment_id = await create_experiment(session, user_id)
    charge = usage(experiment_id, "1")
    row_id = user_id if deleted == "User" else experiment_id

    result, waiting = await charge_behind(
        sessions, charge, f'DELETE FROM "{deleted}" WHERE id = :id', {"id": row_id}
    )
    assert waiting.startswith(waits_in), waiting
    assert isinstance(result, charging.OwnerChanged), f"got {result!r}"
    retried = await charge_alone(sessions, charge)
    assert getattr(retried, retry_finds) == [charge.event_id]
    assert retried.charged == []


async def test_a_user_deleted_while_a_batch_of_theirs_runs_waits_for_the_batch(
    sessions: Sessions,
) -> None:
    """The platform deletes U while a batch charging U's experiment E is under way (here waiting
    for E, which another transaction holds). The deletion locks U and then, by ON DELETE SET NULL,
    E: it must wait for the batch, not deadlock with it. Both succeed."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session, credits=100)
        experiment_id = await create_experiment(session, user_id)
    charge = usage(experiment_id, "2")

    async def delete_user() -> None:
        async with session_scope(sessions) as platform:
            await platform.execute(text('DELETE FROM "User" WHERE id = :id'), {"id": user_id})

    async with sessions() as holder:
        await holder.begin()
        await holder.execute(
            text('SELECT id FROM "MAACExperiment" WHERE id = :id FOR UPDATE'),
            {"id": experiment_id},
        )
        batch = asyncio.create_task(charge_alone(sessions, charge))
        await wait_until_blocked_on_a_lock(sessions)
        deletion = asyncio.create_task(delete_user())
        await wait_until_blocked_on_a_lock(sessions, backends=2)
        await holder.commit()
        outcome, deleted = await asyncio.gather(batch, deletion, return_exceptions=True)
    assert isinstance(outcome, charging.UsageOutcome), f"the batch failed: {outcome!r}"
    assert deleted is None, f"the deletion failed: {deleted!r}"
    assert outcome.charged == [charge.event_id]
    async with session_scope(sessions) as session:
        experiment = await session.get(MAACExperiment, experiment_id)
        assert experiment is not None
        assert (experiment.user_id, experiment.credits_used) == (None, 2)
        assert await session.get(User, user_id) is None
        # The user's rows went with the user; its call records stay and account for the
        # experiment's creditsUsed, so the books still reconcile.
        assert await find_violations(session) == []


async def test_a_batch_writes_its_rows_before_waiting_for_its_users(sessions: Sessions) -> None:
    """Another transaction holds U's balance lock (as a batch of another experiment of U does
    while it updates U): the batch inserts its rows and waits only at the user lock, and then
    completes with the right balance."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session, credits=100)
        experiment_id = await create_experiment(session, user_id)
    charge = usage(experiment_id, "2.5")

    outcome, waiting = await charge_behind(
        sessions, charge, 'SELECT id FROM "User" WHERE id = :id FOR NO KEY UPDATE', {"id": user_id}
    )
    assert waiting.startswith('SELECT id, credits FROM "User"'), waiting
    assert isinstance(outcome, charging.UsageOutcome), f"got {outcome!r}"
    assert outcome.charged == [charge.event_id]
    assert outcome.balances == {user_id: 97}
    assert await credits_of(sessions, user_id) == 97


# --------------------------------------------------------------------------------------------
# 4. an event id lives in CreditTransaction or in UnbilledUsage, never both


@pytest.mark.parametrize("first_is_unbilled", [True, False])
async def test_an_event_id_is_recorded_in_one_table_only_under_concurrency(
    sessions: Sessions, first_is_unbilled: bool
) -> None:
    """The same event id delivered for two experiments, one without a user and one with, by two
    concurrent batches: the second waits for the first and finds the event already recorded."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100)
        owned = await create_experiment(session, user_id)
        orphan = await create_experiment(session, None)
    event_id = unique("evt")
    first_experiment, second_experiment = (orphan, owned) if first_is_unbilled else (owned, orphan)

    async def second_batch() -> charging.UsageOutcome:
        async with session_scope(sessions) as second:
            return await charging.charge_usage(second, [usage(second_experiment, "3", event_id)])

    async with sessions() as first:
        await first.begin()
        await charging.charge_usage(first, [usage(first_experiment, "3", event_id)])
        task = asyncio.create_task(second_batch())
        await wait_until_blocked_on_a_lock(sessions)
        await first.commit()
    outcome = await task

    async with session_scope(sessions) as session:
        in_transactions = await session.scalar(
            select(func.count()).where(CreditTransaction.idempotency_key == f"usage:{event_id}")
        )
        in_unbilled = await session.scalar(
            select(func.count()).where(UnbilledUsage.event_id == event_id)
        )
        assert await find_violations(session) == []
    assert outcome.duplicates == [event_id]
    assert (in_transactions or 0) + (in_unbilled or 0) == 1
    assert await credits_of(sessions, user_id) == (100 if first_is_unbilled else 97)


# --------------------------------------------------------------------------------------------
# 5. the ledger's own API cannot break an invariant (private database)


async def test_exact_cost_finer_than_18_places_is_refused(private_sessions: Sessions) -> None:
    """exactCreditsUsed is NUMERIC(38,18): a cost finer than that would be rounded by PostgreSQL
    while the carry charged it, so the ledger refuses it."""
    async with session_scope(private_sessions) as session:
        user_id = await create_user(session, 100)
        experiment_id = await create_experiment(session, user_id)
    with pytest.raises(journal.InvalidAmount, match="at most 18 decimal places"):
        async with session_scope(private_sessions) as session:
            await charging.charge_usage(session, [usage(experiment_id, "1E-19")])
    async with session_scope(private_sessions) as session:
        assert await find_violations(session) == []
    assert await credits_of(private_sessions, user_id) == 100


async def test_post_refuses_usage_of_an_experiment(
    private_sessions: Sessions,
) -> None:
    """A USAGE row of an experiment must move its creditsUsed too, which only charge_usage
    does: `post` refuses it."""
    async with session_scope(private_sessions) as session:
        user_id = await create_user(session, 100)
        experiment_id = await create_experiment(session, user_id)
    with pytest.raises(journal.LedgerError, match="charge_usage"):
        async with session_scope(private_sessions) as session:
            await journal.post(
                session,
                journal.Posting(
                    user_id,
                    TransactionType.USAGE,
                    -5,
                    "manual usage",
                    unique("k"),
                    experiment_id=experiment_id,
                ),
            )
    async with session_scope(private_sessions) as session:
        assert await find_violations(session) == []


# --------------------------------------------------------------------------------------------
# 6. lock order: keys are inserted in a fixed order


async def test_post_many_batches_sharing_keys_in_another_order_do_not_deadlock(
    private_sessions: Sessions,
) -> None:
    """Two batches that post the same keys in opposite orders take the unique-index locks in
    one order, because rows are inserted in key order. A test-only trigger (private database)
    slows each row insert so the interleaving is certain; attempts=1 so a deadlock would
    surface instead of being retried away. The keys are the first batch's by then, for another
    user: the second is refused for them, and never deadlocks."""
    async with session_scope(private_sessions) as session:
        users = [await create_user(session) for _ in range(2)]
        await session.execute(
            text(
                "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$"
            )
        )
        await session.execute(
            text(
                'CREATE TRIGGER slow_row BEFORE INSERT ON "CreditTransaction" '
                "FOR EACH ROW EXECUTE FUNCTION slow_row()"
            )
        )
    keys = [unique("k") for _ in range(4)]

    async def batch(user: str, ordered: list[str]) -> None:
        async def work(session: AsyncSession) -> None:
            await journal.post_many(
                session,
                [journal.Posting(user, TransactionType.PURCHASE, 1, "p", k) for k in ordered],
            )

        await run_in_transaction(private_sessions, work, attempts=1)

    results = await asyncio.gather(
        batch(users[0], keys), batch(users[1], keys[::-1]), return_exceptions=True
    )
    outcomes = sorted(type(r).__name__ for r in results)
    assert outcomes == ["KeyConflict", "NoneType"], results


def test_a_payload_digest_compares_on_the_bytes_its_record_kept() -> None:
    digest = hashlib.sha256(b'{"event_id":"e-1"}').hexdigest()
    other = hashlib.sha256(b'{"event_id":"e-2"}').hexdigest()
    kept = charging.stored_digest(digest)
    assert kept is not None
    assert len(kept) == charging.DIGEST_BYTES
    older = bytes.fromhex(digest[:32])  # records written before keep 16 bytes
    assert charging.same_payload(kept, digest)
    assert charging.same_payload(older, digest)
    assert not charging.same_payload(kept, other)
    assert not charging.same_payload(older, other)
    changed_late = older[:12] + bytes([older[12] ^ 1]) + older[13:]
    assert not charging.same_payload(changed_late, digest)
    assert charging.same_payload(None, digest)
    assert charging.same_payload(kept, None)
