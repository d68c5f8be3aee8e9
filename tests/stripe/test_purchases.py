"""A completed Checkout session is credited only when metering created it and it matches what
metering sold; anything else claiming to be a purchase is quarantined with its reason."""

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ops.db import session_scope
from metering.ops.models import CreditTransaction, TransactionType
from metering.stripe import processing
from metering.stripe.handlers import Outcome
from metering.stripe.processing import EventQuarantined
from tests.stripe.deliveries import (
    CENTS,
    CREDITS,
    balance,
    charge,
    checkout_session,
    deliver,
    event,
    ours,
    stored,
)

Change = Callable[[dict[str, Any]], None]


def paid_in(currency: str) -> Change:
    return lambda checkout: checkout.update(currency=currency)


def amounts(subtotal: int, total: int, discount: int = 0, tax: int = 0) -> Change:
    details = {"amount_discount": discount, "amount_shipping": 0, "amount_tax": tax}
    return lambda checkout: checkout.update(
        amount_subtotal=subtotal, amount_total=total, total_details=details
    )


def metadata(**values: str) -> Change:
    return lambda checkout: checkout["metadata"].update(values)


QUARANTINED: dict[str, tuple[Change, str]] = {
    "paid in another currency": (paid_in("eur"), "currency_mismatch"),
    "a subtotal below the price": (amounts(CENTS - 1, CENTS - 1), "amount_mismatch"),
    "a subtotal above the price": (amounts(CENTS + 100, CENTS + 100), "amount_mismatch"),
    "a total lower than the subtotal with no discount": (amounts(CENTS, 1), "amount_mismatch"),
    "a discount that does not add up": (amounts(CENTS, 500, discount=100), "amount_mismatch"),
    "tax metering never asked for": (amounts(CENTS, CENTS + 80, tax=80), "amount_mismatch"),
    "no total": (lambda checkout: checkout.update(amount_total=None), "amount_mismatch"),
    "credits in the metadata raised": (metadata(credits="10000000"), "session_mismatch"),
    "another user in the metadata": (metadata(userId="user-else"), "session_mismatch"),
}


async def purchases_of(sessions: async_sessionmaker[AsyncSession], user_id: str) -> int:
    async with session_scope(sessions) as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(CreditTransaction)
                .where(
                    CreditTransaction.user_id == user_id,
                    CreditTransaction.type == TransactionType.PURCHASE,
                )
            )
            or 0
        )


@pytest.mark.parametrize("name", list(QUARANTINED))
async def test_a_session_that_does_not_match_its_record_is_quarantined(
    sessions: async_sessionmaker[AsyncSession], user_id: str, name: str
) -> None:
    change, code = QUARANTINED[name]
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    change(checkout)
    completed = event("checkout.session.completed", checkout)

    with pytest.raises(EventQuarantined, match=code):
        await deliver(sessions, completed)
    refund = await deliver(
        sessions, event("charge.refunded", charge(checkout["payment_intent"], CENTS, CENTS))
    )

    row = await stored(sessions, completed["id"])
    assert (row.outcome, row.processed_at, row.attempts) == ("quarantined", None, 1)
    assert row.last_error is not None
    assert row.last_error.startswith(f"{code}: Checkout session {checkout['id']}")
    assert refund.outcome is Outcome.AWAITING_PURCHASE
    assert (await balance(sessions, user_id), await purchases_of(sessions, user_id)) == (0, 0)
    async with session_scope(sessions) as session:
        assert completed["id"] not in await processing.requeueable_events(session, older_than_s=0)
        failed = await processing.list_events(
            session, failed_only=True, awaiting_bound_s=3_600, limit=10_000
        )
    assert {completed["id"], refund.event_id} <= {r.id for r in failed}


async def test_a_session_with_our_metadata_but_no_record_is_quarantined(
    sessions: async_sessionmaker[AsyncSession], user_id: str
) -> None:
    unrecorded = event("checkout.session.completed", checkout_session(user_id, CREDITS))

    with pytest.raises(EventQuarantined, match="unrecorded_session"):
        await deliver(sessions, unrecorded)

    assert (await stored(sessions, unrecorded["id"])).outcome == "quarantined"
    assert await balance(sessions, user_id) == 0


async def test_the_recorded_credits_are_bought_whatever_the_metadata_omits(
    sessions: async_sessionmaker[AsyncSession], user_id: str
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    checkout.update(metadata={}, client_reference_id=None)

    processed = await deliver(sessions, event("checkout.session.completed", checkout))

    assert (processed.outcome, processed.user_id) == (Outcome.PURCHASED, user_id)
    assert await balance(sessions, user_id) == CREDITS


async def test_a_discounted_session_buys_its_credits_and_refunds_claw_back_pro_rata(
    sessions: async_sessionmaker[AsyncSession], user_id: str
) -> None:
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    amounts(CENTS, 800, discount=200)(checkout)
    pi = checkout["payment_intent"]

    bought = await deliver(sessions, event("checkout.session.completed", checkout))
    await deliver(sessions, event("charge.refunded", charge(pi, 800, 400)))
    half = await balance(sessions, user_id)
    await deliver(sessions, event("charge.refunded", charge(pi, 800, 800)))

    assert bought.outcome is Outcome.PURCHASED
    assert (half, await balance(sessions, user_id)) == (CREDITS // 2, 0)
    async with session_scope(sessions) as session:
        metadata_ = await session.scalar(
            select(CreditTransaction.metadata_).where(
                CreditTransaction.user_id == user_id,
                CreditTransaction.type == TransactionType.PURCHASE,
            )
        )
    assert metadata_ is not None
    assert (metadata_["amountTotalCents"], metadata_["discountCents"]) == (800, 200)


async def test_a_failed_delayed_payment_of_a_session_not_ours_is_ignored(
    sessions: async_sessionmaker[AsyncSession], user_id: str
) -> None:
    ours_ = await ours(sessions, checkout_session(user_id, CREDITS, paid=False))
    theirs = checkout_session(user_id, CREDITS, paid=False)

    mine = await deliver(sessions, event("checkout.session.async_payment_failed", ours_))
    other = await deliver(sessions, event("checkout.session.async_payment_failed", theirs))

    assert (mine.outcome, other.outcome) == (Outcome.NO_CREDITS, Outcome.IGNORED)
