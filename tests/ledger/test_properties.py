"""Property: whatever the sequence of ledger operations, replays and concurrency, the books balance.

Each generated operation has a fixed key, so a replay is an exact repeat; operations are split
between concurrent workers that each post their share as one transaction, in any order.
"""

import asyncio
from collections import defaultdict
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.ledger import charging, journal
from metering.ledger.reconcile import find_violations
from metering.ops.db import create_engine, make_sessionmaker, run_in_transaction, session_scope
from metering.ops.models import MAACExperiment, TransactionType, User
from metering.pricing.money import whole_credits
from tests.factories import CALL, create_experiment, create_user, unique

USERS = 3
EXPERIMENTS = 4  # experiment i belongs to user i % USERS; the last one has no user

posting_op = st.tuples(
    st.just("post"),
    st.integers(0, USERS - 1),
    st.sampled_from([TransactionType.PURCHASE, TransactionType.REFUND, TransactionType.ADJUSTMENT]),
    st.integers(1, 5_000),
    st.booleans(),
)
usage_op = st.tuples(
    st.just("usage"),
    st.integers(0, EXPERIMENTS - 1),
    st.decimals(min_value=0, max_value=50, places=6),
)
operations = st.lists(st.one_of(posting_op, usage_op), min_size=1, max_size=25)


def _plan(
    ops: list[tuple[object, ...]], replays: list[int]
) -> list[tuple[int, tuple[object, ...]]]:
    """Operations numbered by their key, with some of them delivered again."""
    numbered = list(enumerate(ops))
    return numbered + [numbered[i % len(numbered)] for i in replays]


async def _run(
    database_url: str, ops: list[tuple[object, ...]], replays: list[int], workers: int
) -> None:
    engine = create_engine(database_url, pool_size=workers)
    sessions = make_sessionmaker(engine)
    run_id = unique("prop")
    try:
        async with session_scope(sessions) as session:
            users = [await create_user(session) for _ in range(USERS)]
            experiments = [
                await create_experiment(session, users[i % USERS] if i < EXPERIMENTS - 1 else None)
                for i in range(EXPERIMENTS)
            ]
        plan = _plan(ops, replays)
        shares = [plan[w::workers] for w in range(workers)]

        async def worker(share: list[tuple[int, tuple[object, ...]]]) -> None:
            async def work(session: AsyncSession) -> None:
                postings, charges = [], []
                for key, op in share:
                    if op[0] == "post":
                        _, user, type_, amount, negative = op
                        signed = (
                            -amount if negative and type_ is TransactionType.ADJUSTMENT else amount
                        )
                        postings.append(
                            journal.Posting(users[user], type_, signed, "p", f"{run_id}-{key}")
                        )
                    else:
                        _, experiment, exact = op
                        charges.append(
                            charging.UsageCharge(
                                f"{run_id}-{key}", experiments[experiment], exact, CALL
                            )
                        )
                await charging.charge_usage(session, charges)
                await journal.post_many(session, postings)

            await run_in_transaction(sessions, work)

        await asyncio.gather(*(worker(share) for share in shares))

        expected_credits: dict[str, int] = defaultdict(int)
        exact_by_experiment: dict[str, Decimal] = defaultdict(Decimal)
        for op in ops:
            if op[0] == "post":
                _, user, type_, amount, negative = op
                signed = -amount if negative and type_ is TransactionType.ADJUSTMENT else amount
                expected_credits[users[user]] += signed
            else:
                exact_by_experiment[experiments[op[1]]] += op[2]
        for i, experiment in enumerate(experiments[: EXPERIMENTS - 1]):
            expected_credits[users[i % USERS]] -= whole_credits(exact_by_experiment[experiment])

        async with session_scope(sessions) as session:
            assert await find_violations(session) == []
            credit_rows = await session.execute(
                select(User.id, User.credits).where(User.id.in_(users))
            )
            credits = {user_id: amount for user_id, amount in credit_rows}
            used_rows = await session.execute(
                select(MAACExperiment.id, MAACExperiment.credits_used).where(
                    MAACExperiment.id.in_(experiments)
                )
            )
            used = {experiment_id: amount for experiment_id, amount in used_rows}
        assert credits == {u: expected_credits[u] for u in users}
        assert used == {e: whole_credits(exact_by_experiment[e]) for e in experiments}
    finally:
        await engine.dispose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=operations,
    replays=st.lists(st.integers(0, 100), max_size=10),
    workers=st.integers(1, 4),
)
def test_any_sequence_with_replays_and_concurrency_reconciles(
    database_url: str, ops: list[tuple[object, ...]], replays: list[int], workers: int
) -> None:
    asyncio.run(_run(database_url, ops, replays, workers))
