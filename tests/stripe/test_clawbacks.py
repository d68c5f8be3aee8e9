"""Refunds and disputes of one payment through the real handlers and ledger: the credits clawed
back never exceed the credits bought, in any order, count and concurrency of events."""

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ledger import journal
from metering.ledger.reconcile import find_violations
from metering.ops.db import create_engine, make_sessionmaker, session_scope
from metering.ops.models import CreditTransaction, StripeEvent, TransactionType
from metering.stripe import processing
from metering.stripe.handlers import Outcome
from metering.stripe.webhooks import ReceivedEvent, store_event
from tests.factories import create_user
from tests.stripe.deliveries import (
    balance,
    charge,
    checkout_session,
    deliver,
    dispute,
    event,
    new_id,
    ours,
    record,
    refund,
)
from tests.stripe.scenarios import CENTS, CREDITS, Scenario, scenarios, stripe_events

Events = Callable[[str], list[dict[str, Any]]]
"""The events of a case, given its payment intent."""


def case(*build: Callable[[str], dict[str, Any]]) -> Events:
    return lambda pi: [make(pi) for make in build]


def refunded(cents: int, *listed: tuple[str, int, str]) -> Callable[[str], dict[str, Any]]:
    """`charge.refunded` with `amount_refunded` = `cents`, listing refunds (id, cents, status)
    if any are given (API versions before 2022-11-15), else without a list."""

    def make(pi: str) -> dict[str, Any]:
        refunds = [refund(pi, c, s, f"re_{r}_{pi}") for r, c, s in listed]
        return event("charge.refunded", charge(pi, CENTS, cents, refunds if listed else None))

    return make


def refund_event(kind: str, name: str, cents: int, status: str) -> Callable[[str], dict[str, Any]]:
    return lambda pi: event(kind, refund(pi, cents, status, f"re_{name}_{pi}"))


def disputed(kind: str, name: str, cents: int, status: str) -> Callable[[str], dict[str, Any]]:
    return lambda pi: event(
        f"charge.dispute.{kind}", dispute(pi, cents, status, dispute_id=f"dp_{name}_{pi}")
    )


CASES: dict[str, tuple[Events, int]] = {
    "refunded in full, then disputed in full and lost": (
        case(
            refunded(CENTS),
            disputed("created", "a", CENTS, "needs_response"),
            disputed("closed", "a", CENTS, "lost"),
        ),
        0,
    ),
    "refunded half, then disputed in full and lost": (
        case(
            refunded(CENTS // 2),
            disputed("created", "a", CENTS, "needs_response"),
            disputed("closed", "a", CENTS, "lost"),
        ),
        0,
    ),
    "disputed, refunded, then the dispute won: the refund stands": (
        case(
            disputed("created", "a", CENTS, "needs_response"),
            refunded(CENTS),
            disputed("closed", "a", CENTS, "won"),
        ),
        0,
    ),
    "refunded half, disputed half and won": (
        case(
            refunded(CENTS // 2),
            disputed("created", "a", CENTS // 2, "needs_response"),
            disputed("closed", "a", CENTS // 2, "won"),
        ),
        CREDITS // 2,
    ),
    "a refund that fails gives its clawback back": (
        case(
            refunded(CENTS, ("a", CENTS, "succeeded")),
            refund_event("charge.refund.updated", "a", CENTS, "failed"),
        ),
        CREDITS,
    ),
    "a refund canceled before it succeeded": (
        case(
            refunded(300, ("a", 300, "requires_action")),
            refund_event("charge.refund.updated", "a", 300, "canceled"),
        ),
        CREDITS,
    ),
    "the failure arrives before the refund": (
        case(
            refund_event("charge.refund.updated", "a", CENTS, "failed"),
            refunded(CENTS, ("a", CENTS, "succeeded")),
        ),
        CREDITS,
    ),
    "a refund failing after a lost dispute of the same money gives nothing back": (
        case(
            refunded(CENTS, ("a", CENTS, "succeeded")),
            disputed("created", "b", CENTS, "needs_response"),
            disputed("closed", "b", CENTS, "lost"),
            refund_event("charge.refund.updated", "a", CENTS, "failed"),
        ),
        0,
    ),
    "known only by amount, then named by refund.created, then failed": (
        case(
            refunded(400),
            refund_event("refund.created", "a", 400, "succeeded"),
            refund_event("refund.failed", "a", 400, "failed"),
        ),
        CREDITS,
    ),
    "two refunds named by the charge's list, one failing": (
        case(
            refunded(300, ("a", 300, "succeeded")),
            refunded(1_000, ("a", 300, "succeeded"), ("b", 700, "pending")),
            refund_event("charge.refund.updated", "b", 700, "failed"),
        ),
        CREDITS - 3_000,
    ),
    "a dispute closed as won before it was created": (
        case(
            disputed("closed", "a", 400, "won"),
            disputed("created", "a", 400, "needs_response"),
        ),
        CREDITS,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_clawbacks_never_exceed_the_credits_bought(
    sessions: async_sessionmaker[AsyncSession], user_id: str, name: str
) -> None:
    build, expected = CASES[name]
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    await deliver(sessions, event("checkout.session.completed", checkout))

    for evt in build(checkout["payment_intent"]):
        await deliver(sessions, evt)
        assert 0 <= await balance(sessions, user_id) <= CREDITS

    assert await balance(sessions, user_id) == expected


@pytest.mark.parametrize("name", list(CASES))
async def test_every_order_of_a_case_ends_the_same(
    sessions: async_sessionmaker[AsyncSession], name: str
) -> None:
    build, expected = CASES[name]
    rng = random.Random(name)
    for _ in range(3):
        async with session_scope(sessions) as session:
            user_id = await create_user(session)
        checkout = await ours(sessions, checkout_session(user_id, CREDITS))
        evts = [event("checkout.session.completed", checkout), *build(checkout["payment_intent"])]
        shuffled = rng.sample(evts + evts[1:], 2 * len(evts) - 1)

        for evt in shuffled:
            async with session_scope(sessions) as session:
                if await session.get(StripeEvent, evt["id"]) is not None:
                    await processing.process_event(sessions, evt["id"], lock_timeout_ms=5_000)
                    continue
            await deliver(sessions, evt)
            assert 0 <= await balance(sessions, user_id) <= CREDITS

        assert await balance(sessions, user_id) == expected


async def test_clawbacks_are_keyed_by_refund_and_dispute_ids(
    sessions: async_sessionmaker[AsyncSession], user_id: str
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    pi = checkout["payment_intent"]
    await deliver(sessions, event("checkout.session.completed", checkout))

    first = await deliver(sessions, refunded(300, ("a", 300, "succeeded"))(pi))
    second = await deliver(sessions, refunded(300, ("a", 300, "succeeded"))(pi))
    await deliver(sessions, disputed("created", "d", 400, "needs_response")(pi))
    won = await deliver(sessions, disputed("closed", "d", 400, "won")(pi))
    failed = await deliver(sessions, refund_event("charge.refund.updated", "a", 300, "failed")(pi))

    assert (first.outcome, second.outcome) == (Outcome.CLAWED_BACK, Outcome.NOTHING_TO_CLAW_BACK)
    assert (won.outcome, failed.outcome) == (Outcome.REINSTATED, Outcome.REINSTATED)
    async with session_scope(sessions) as session:
        rows = (
            await session.execute(
                select(CreditTransaction.idempotency_key, CreditTransaction.amount)
                .where(
                    CreditTransaction.user_id == user_id,
                    CreditTransaction.type == TransactionType.ADJUSTMENT,
                )
                .order_by(CreditTransaction.created_at, CreditTransaction.id)
            )
        ).all()
        payments = set(
            await session.scalars(
                select(CreditTransaction.stripe_payment_id).where(
                    CreditTransaction.user_id == user_id
                )
            )
        )
    assert [tuple(row) for row in rows] == [
        (f"clawback:re_a_{pi}", -3_000),
        (f"clawback:dp_d_{pi}", -4_000),
        (f"clawback:dp_d_{pi}:reinstated", 4_000),
        (f"clawback:re_a_{pi}:reinstated", 3_000),
    ]
    assert payments == {pi}
    assert await balance(sessions, user_id) == CREDITS


async def _run(database_url: str, scenario: Scenario, plan: list[int], workers: int) -> None:
    """Deliver the scenario's events (and the purchase) in `plan` order, by `workers` concurrent
    processors; the clawback stays within the purchase throughout and ends exact."""
    engine = create_engine(database_url, pool_size=workers + 1)
    sessions = make_sessionmaker(engine)
    try:
        async with session_scope(sessions) as session:
            user_id = await create_user(session)
            checkout = await record(session, checkout_session(user_id, CREDITS))
        pi = checkout["payment_intent"]
        ids = [new_id("re") for _ in scenario.refunds] + [new_id("dp") for _ in scenario.disputes]
        evts = [event("checkout.session.completed", checkout), *stripe_events(pi, scenario, ids)]
        deliveries = [evts[i % len(evts)] for i in plan]

        async def within_purchase() -> None:
            assert 0 <= await balance(sessions, user_id) <= CREDITS

        async def worker(share: list[dict[str, Any]]) -> None:
            for evt in share:
                async with session_scope(sessions) as session:
                    await store_event(session, ReceivedEvent(evt["id"], evt["type"], False, evt))
                processed = await processing.process_event(
                    sessions, evt["id"], lock_timeout_ms=30_000
                )
                for woken in processed.wake_event_ids:
                    await processing.process_event(sessions, woken, lock_timeout_ms=30_000)
                await within_purchase()

        await asyncio.gather(*(worker(deliveries[w::workers]) for w in range(workers)))
        # What beat does for an event whose wake-up raced with its purchase.
        async with session_scope(sessions) as session:
            left = await processing.requeueable_events(session, older_than_s=0)
        for event_id in left:
            await processing.process_event(sessions, event_id, lock_timeout_ms=30_000)

        async with session_scope(sessions) as session:
            unprocessed = await session.scalars(
                select(StripeEvent.id).where(
                    StripeEvent.id.in_([e["id"] for e in evts]), StripeEvent.processed_at.is_(None)
                )
            )
            assert list(unprocessed) == []
            assert await find_violations(session) == []
        assert await balance(sessions, user_id) == CREDITS - scenario.expected_clawback()
    finally:
        await engine.dispose()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), data=st.data(), workers=st.integers(1, 3))
def test_any_history_delivered_in_any_order_and_count_claws_back_exactly(
    database_url: str, scenario: Scenario, data: st.DataObject, workers: int
) -> None:
    count = 1 + sum(len(life) for _, life in scenario.refunds + scenario.disputes) * 2
    repeats = data.draw(st.lists(st.integers(0, count), max_size=6))
    plan = data.draw(st.permutations(list(range(count)) + repeats))
    asyncio.run(_run(database_url, scenario, plan, workers))


async def test_a_key_taken_by_an_earlier_row_still_ends_within_the_purchase(
    sessions: async_sessionmaker[AsyncSession], user_id: str
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    pi = checkout["payment_intent"]
    await deliver(sessions, event("checkout.session.completed", checkout))
    async with session_scope(sessions) as session:
        await journal.post(
            session,
            journal.Posting(
                user_id=user_id,
                type=TransactionType.ADJUSTMENT,
                amount=-1_000,
                description="clawback of an earlier version",
                idempotency_key=f"re_a_{pi}",
                stripe_payment_id=pi,
            ),
        )

    await deliver(sessions, refunded(CENTS, ("a", CENTS, "succeeded"))(pi))

    assert await balance(sessions, user_id) == 0
