"""Handlers called directly: each event moves credits exactly once, in any order and count."""

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.budget import halt
from metering.ops.db import session_scope
from metering.ops.models import CreditTransaction, StripeEvent, TransactionType
from metering.stripe import handlers, processing
from metering.stripe.handlers import Outcome
from metering.stripe.processing import EventFailed, EventRetrying
from metering.stripe.webhooks import ReceivedEvent, store_event
from tests.factories import create_experiment
from tests.stripe import deliveries
from tests.stripe.deliveries import (
    CENTS,
    CREDITS,
    balance,
    charge,
    checkout_session,
    deliver,
    dispute,
    event,
    ours,
    process,
    stored,
)


async def test_a_paid_checkout_buys_its_credits_once(
    sessions: async_sessionmaker[AsyncSession], user_id: str
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    completed = event("checkout.session.completed", checkout)

    first = await deliver(sessions, completed)
    again = await process(sessions, completed["id"])
    succeeded = await deliver(sessions, event("checkout.session.async_payment_succeeded", checkout))

    assert (first.outcome, first.user_id) == (Outcome.PURCHASED, user_id)
    assert again.already_processed
    assert succeeded.outcome is Outcome.ALREADY_RECORDED
    assert await balance(sessions, user_id) == CREDITS
    async with session_scope(sessions) as session:
        (row,) = await session.scalars(
            select(CreditTransaction).where(CreditTransaction.user_id == user_id)
        )
    assert (row.type, row.amount, row.idempotency_key) == (
        TransactionType.PURCHASE,
        CREDITS,
        f"purchase:{checkout['id']}",
    )
    assert (row.stripe_checkout_id, row.stripe_payment_id) == (
        checkout["id"],
        checkout["payment_intent"],
    )
    assert (await stored(sessions, completed["id"])).processed_at is not None


async def test_an_unpaid_completion_waits_for_the_delayed_payment(
    sessions: async_sessionmaker[AsyncSession], user_id: str
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS, paid=False))

    unpaid = await deliver(sessions, event("checkout.session.completed", checkout))
    failed = await deliver(sessions, event("checkout.session.async_payment_failed", checkout))
    assert (unpaid.outcome, failed.outcome) == (Outcome.NO_CREDITS, Outcome.NO_CREDITS)
    assert await balance(sessions, user_id) == 0

    checkout["payment_status"] = "paid"
    paid = await deliver(sessions, event("checkout.session.async_payment_succeeded", checkout))
    assert paid.outcome is Outcome.PURCHASED
    assert await balance(sessions, user_id) == CREDITS


async def test_events_not_ours_are_stored_and_ignored(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    foreign = deliveries.fixture("checkout_session")
    foreign["payment_status"] = "paid"
    unknown = deliveries.fixture("event")
    unknown["id"] = deliveries.new_id("evt")

    for evt in (event("checkout.session.completed", foreign), unknown):
        processed = await deliver(sessions, evt)
        assert processed.outcome is Outcome.IGNORED
        row = await stored(sessions, evt["id"])
        assert (row.outcome, row.processed_at is not None) == ("ignored", True)


REFUNDS = [[300], [300, 300], [300, 1000], [1000, 300], [300, 700, 1000, 300, 700]]


@pytest.mark.parametrize("refunded", REFUNDS, ids=lambda r: "-".join(map(str, r)))
async def test_refunds_claw_back_pro_rata_never_twice(
    sessions: async_sessionmaker[AsyncSession], user_id: str, refunded: list[int]
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    await deliver(sessions, event("checkout.session.completed", checkout))

    for cents in refunded:
        await deliver(
            sessions, event("charge.refunded", charge(checkout["payment_intent"], CENTS, cents))
        )

    assert await balance(sessions, user_id) == CREDITS - CREDITS * max(refunded) // CENTS


@pytest.mark.parametrize("order", list(itertools.permutations(["refund", "dispute", "purchase"])))
async def test_refunds_and_disputes_before_their_purchase_converge(
    sessions: async_sessionmaker[AsyncSession], user_id: str, order: tuple[str, ...]
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    payment = checkout["payment_intent"]
    events = {
        "purchase": event("checkout.session.completed", checkout),
        "refund": event("charge.refunded", charge(payment, CENTS, 250)),
        "dispute": event("charge.dispute.created", dispute(payment, 400)),
    }
    for name in order:
        processed = await deliver(sessions, events[name])
        if name != "purchase" and order.index(name) < order.index("purchase"):
            assert processed.outcome is Outcome.AWAITING_PURCHASE
            assert (await stored(sessions, events[name]["id"])).processed_at is None

    assert await balance(sessions, user_id) == CREDITS - 2_500 - 4_000
    for evt in events.values():
        assert (await stored(sessions, evt["id"])).processed_at is not None


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (["created"], CREDITS - 4_000),
        (["created", "won"], CREDITS),
        (["won", "created"], CREDITS),
        (["created", "won", "won", "created"], CREDITS),
        (["created", "lost"], CREDITS - 4_000),
        (["lost", "created", "lost"], CREDITS - 4_000),
        (["warning_closed"], CREDITS),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, list) else str(value),
)
async def test_disputes_claw_back_and_give_back_once(
    sessions: async_sessionmaker[AsyncSession], user_id: str, steps: list[str], expected: int
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    await deliver(sessions, event("checkout.session.completed", checkout))
    dispute_id = deliveries.new_id("dp")

    for step in steps:
        if step == "created":
            obj = dispute(checkout["payment_intent"], 400, dispute_id=dispute_id)
            await deliver(sessions, event("charge.dispute.created", obj))
        else:
            obj = dispute(checkout["payment_intent"], 400, step, dispute_id=dispute_id)
            await deliver(sessions, event("charge.dispute.closed", obj))

    assert await balance(sessions, user_id) == expected


async def test_a_purchase_lifts_the_buyers_halt_flags_after_commit(
    sessions: async_sessionmaker[AsyncSession], user_id: str, redis: Redis, redis_prefix: str
) -> None:
    await halt.raise_halt(redis, redis_prefix, user_id, ["exp-1", "exp-2"], "balance")
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    completed = event("checkout.session.completed", checkout)

    processed = await deliver(sessions, completed)
    assert await halt.is_halted(redis, redis_prefix, "exp-1")
    lifted = await processing.after_commit(redis, sessions, redis_prefix, processed, 0)

    assert lifted == ["exp-1", "exp-2"]
    assert not await halt.is_halted(redis, redis_prefix, "exp-2")


async def test_a_clawback_halts_and_a_dispute_won_lifts_the_buyers_experiments(
    sessions: async_sessionmaker[AsyncSession], user_id: str, redis: Redis, redis_prefix: str
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    await deliver(sessions, event("checkout.session.completed", checkout))
    async with session_scope(sessions) as session:
        experiment_id = await create_experiment(session, user_id)
    dispute_id = deliveries.new_id("dp")
    whole = checkout["amount_total"]

    opened = dispute(checkout["payment_intent"], whole, dispute_id=dispute_id)
    clawed = await deliver(sessions, event("charge.dispute.created", opened))
    await processing.after_commit(redis, sessions, redis_prefix, clawed, 0)
    assert await balance(sessions, user_id) == 0
    assert await halt.is_halted(redis, redis_prefix, experiment_id)

    won = dispute(checkout["payment_intent"], whole, "won", dispute_id=dispute_id)
    given = await deliver(sessions, event("charge.dispute.closed", won))
    lifted = await processing.after_commit(redis, sessions, redis_prefix, given, 0)
    assert await balance(sessions, user_id) == CREDITS
    assert lifted == [experiment_id]
    assert not await halt.is_halted(redis, redis_prefix, experiment_id)


@pytest.fixture
def crashing_refunds() -> Iterator[list[int]]:
    """Make the refund handler crash while the list holds a number of crashes still to come."""
    crashes = [1]
    original = handlers.HANDLERS["charge.refunded"]

    async def crash(session: AsyncSession, evt: Any) -> handlers.Handled:
        if crashes[0]:
            crashes[0] -= 1
            raise RuntimeError("handler crashed")
        return await original(session, evt)

    handlers.HANDLERS["charge.refunded"] = crash
    yield crashes
    handlers.HANDLERS["charge.refunded"] = original


async def test_a_crashed_handler_is_recorded_and_its_retry_succeeds(
    sessions: async_sessionmaker[AsyncSession], user_id: str, crashing_refunds: list[int]
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    await deliver(sessions, event("checkout.session.completed", checkout))
    refund = event("charge.refunded", charge(checkout["payment_intent"], CENTS, CENTS))

    with pytest.raises(EventRetrying):
        await deliver(sessions, refund)
    row = await stored(sessions, refund["id"])
    assert (row.outcome, row.attempts, row.processed_at) == ("retrying", 1, None)
    assert row.last_error == "RuntimeError: handler crashed"
    assert await balance(sessions, user_id) == CREDITS

    retried = await process(sessions, refund["id"])
    assert retried.outcome is Outcome.CLAWED_BACK
    row = await stored(sessions, refund["id"])
    assert (row.outcome, row.attempts) == ("clawed_back", 2)
    assert await balance(sessions, user_id) == 0


async def test_a_permanent_failure_is_failed_at_once_and_not_requeued(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    checkout = await ours(sessions, checkout_session("user-missing", CREDITS))
    completed = event("checkout.session.completed", checkout)

    with pytest.raises(EventFailed, match="unknown_user"):
        await deliver(sessions, completed)

    row = await stored(sessions, completed["id"])
    assert (row.outcome, row.attempts) == ("failed", 1)
    async with session_scope(sessions) as session:
        assert completed["id"] not in await processing.requeueable_events(session, older_than_s=0)


async def test_an_event_failing_every_attempt_ends_failed(
    sessions: async_sessionmaker[AsyncSession], user_id: str, crashing_refunds: list[int]
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    await deliver(sessions, event("checkout.session.completed", checkout))
    refund = event("charge.refunded", charge(checkout["payment_intent"], CENTS, CENTS))
    async with session_scope(sessions) as session:
        await store_event(session, ReceivedEvent(refund["id"], refund["type"], False, refund))
        await session.execute(
            update(StripeEvent)
            .where(StripeEvent.id == refund["id"])
            .values(attempts=processing.MAX_ATTEMPTS - 1)
        )

    with pytest.raises(EventFailed, match="handler crashed"):
        await process(sessions, refund["id"])
    assert (await stored(sessions, refund["id"])).outcome == "failed"


async def test_beat_requeues_lost_and_woken_events_only(
    sessions: async_sessionmaker[AsyncSession], user_id: str
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    payment = checkout["payment_intent"]
    never_handled = event("charge.refunded", charge(payment, CENTS, 100))
    awaiting = event("charge.dispute.created", dispute(payment, 100))
    purchase = event("checkout.session.completed", checkout)
    async with session_scope(sessions) as session:
        await store_event(
            session, ReceivedEvent(never_handled["id"], "charge.refunded", False, never_handled)
        )
    await deliver(sessions, awaiting)

    async with session_scope(sessions) as session:
        before = await processing.requeueable_events(session, older_than_s=0)
    async with session_scope(sessions) as session:
        await store_event(session, ReceivedEvent(purchase["id"], purchase["type"], False, purchase))
    await processing.process_event(sessions, purchase["id"], lock_timeout_ms=5_000)
    async with session_scope(sessions) as session:
        after = await processing.requeueable_events(session, older_than_s=0)

    assert never_handled["id"] in before
    assert awaiting["id"] not in before
    assert {never_handled["id"], awaiting["id"]} <= set(after)
    assert purchase["id"] not in after
    for event_id in after:
        if event_id in (never_handled["id"], awaiting["id"]):
            await process(sessions, event_id)
    assert await balance(sessions, user_id) == CREDITS - 1_000 - 1_000
