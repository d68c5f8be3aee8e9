"""Handlers of stored Stripe events, by type: each moves credits through the ledger only.

Exactly once, in any order and count:
- a purchase is keyed by its Checkout session id, so `checkout.session.completed` (paid) and
  `checkout.session.async_payment_succeeded` of one session credit it once. Only sessions
  metering recorded are credited, with the recorded credits, and only when currency and amounts
  match (`purchases`); anything else claiming to be ours is quarantined;
- refunds and disputes (`reversals`) bring the payment's net clawback to what its reversals hold
  now (`clawbacks`), keyed by refund or dispute id: never more than the payment bought, a dispute
  won or a refund failed or canceled gives back what it held;
- every handler of a payment takes a transaction-scoped advisory lock on its payment intent, so
  two events of one payment never interleave. A refund or dispute whose purchase is not recorded
  yet is left unprocessed as `awaiting_purchase`; recording the purchase wakes it.
"""

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.errors import PermanentError
from metering.ledger import journal
from metering.ops.models import TransactionType
from metering.stripe import clawbacks, purchases, reversals


class Outcome(enum.StrEnum):
    """What handling did; the last four leave the event unprocessed."""

    PURCHASED = "purchased"
    ALREADY_RECORDED = "already_recorded"
    NO_CREDITS = "no_credits"
    CLAWED_BACK = "clawed_back"
    REINSTATED = "reinstated"
    NOTHING_TO_CLAW_BACK = "nothing_to_claw_back"
    IGNORED = "ignored"
    AWAITING_PURCHASE = "awaiting_purchase"
    RETRYING = "retrying"
    FAILED = "failed"
    QUARANTINED = "quarantined"


class MalformedEvent(PermanentError):
    code = "malformed_event"


@dataclass(frozen=True)
class Handled:
    """A handler's result. After commit, `user_id`'s halt flags follow the balance (a purchase,
    clawback or give-back), and events awaiting the purchase of `payment_intent` are woken."""

    outcome: Outcome
    user_id: str | None = None
    payment_intent: str | None = None


Handler = Callable[[AsyncSession, Mapping[str, Any]], Awaitable[Handled]]
HANDLERS: dict[str, Handler] = {}
"""Handlers by event type; any other type is stored, acknowledged and ignored."""
PURCHASE_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")


def handles(*event_types: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        for event_type in event_types:
            HANDLERS[event_type] = handler
        return handler

    return register


def handler_for(event_type: str) -> Handler:
    return HANDLERS.get(event_type, ignore)


async def ignore(session: AsyncSession, event: Mapping[str, Any]) -> Handled:
    return Handled(Outcome.IGNORED)


@handles(*PURCHASE_EVENTS)
async def record_purchase(session: AsyncSession, event: Mapping[str, Any]) -> Handled:
    """A paid Checkout session metering created and that matches its record: a PURCHASE of the
    recorded credits, keyed by the session id. `purchases.Quarantined` otherwise."""
    checkout = _object(event)
    order = await purchases.order_of(session, checkout)
    if order is None:
        return Handled(Outcome.IGNORED)
    if checkout.get("payment_status") != "paid":
        return Handled(Outcome.NO_CREDITS)
    paid = purchases.verify_payment(order, checkout)
    payment_intent = reversals.reference_id(checkout.get("payment_intent"))
    if payment_intent is None:
        raise MalformedEvent(f"paid Checkout session {order.session_id} has no payment intent")
    await _lock_payment(session, payment_intent)
    posted = await journal.post(
        session,
        journal.Posting(
            user_id=order.user_id,
            type=TransactionType.PURCHASE,
            amount=order.credits,
            description=f"Purchase of {order.credits:,} credits (Stripe Checkout)",
            idempotency_key=order.session_id,
            metadata={
                "stripeReason": "purchase",
                "stripeEventId": _text(event, "id"),
                "amountTotalCents": paid.amount_cents,
                "amountSubtotalCents": order.amount_cents,
                "discountCents": paid.discount_cents,
                "currency": order.currency,
            },
            stripe_payment_id=payment_intent,
            stripe_checkout_id=order.session_id,
        ),
    )
    outcome = Outcome.PURCHASED if posted.created else Outcome.ALREADY_RECORDED
    return Handled(outcome, user_id=order.user_id, payment_intent=payment_intent)


@handles("checkout.session.async_payment_failed")
async def record_failed_payment(session: AsyncSession, event: Mapping[str, Any]) -> Handled:
    """A delayed payment that failed: no credits."""
    order = await purchases.find_order(session, _text(_object(event), "id"))
    return Handled(Outcome.IGNORED if order is None else Outcome.NO_CREDITS)


@handles(*reversals.REVERSAL_EVENTS)
async def settle_reversal(session: AsyncSession, event: Mapping[str, Any]) -> Handled:
    """A refund, dispute or refunded charge: the payment's clawback follows its reversals."""
    obj = _object(event)
    payment_intent = reversals.reference_id(obj.get("payment_intent"))
    if payment_intent is None:
        return Handled(Outcome.IGNORED)
    try:
        observed = reversals.observe(_text(event, "type"), obj)
    except reversals.MalformedReversal as error:
        raise MalformedEvent(f"event {event.get('id')}: {error}") from error
    await _lock_payment(session, payment_intent)
    purchase = await purchases.find_purchase(session, payment_intent)
    if purchase is None:
        return Handled(Outcome.AWAITING_PURCHASE)
    settled = await clawbacks.settle(session, event, observed, purchase, payment_intent)
    if not settled.posted:
        return Handled(Outcome.NOTHING_TO_CLAW_BACK)
    outcome = Outcome.REINSTATED if settled.credits > 0 else Outcome.CLAWED_BACK
    return Handled(outcome, user_id=purchase.user_id)


async def follow_up(
    session: AsyncSession, event_type: str, event: Mapping[str, Any], outcome: Outcome
) -> Handled:
    """What a processed event still asks after commit: the buyer's halt flags synced (after a
    purchase, a clawback or a give-back) and, after a purchase, the wake-ups of its reversals."""
    if event_type in PURCHASE_EVENTS and outcome in (Outcome.PURCHASED, Outcome.ALREADY_RECORDED):
        checkout = _object(event)
        order = await purchases.find_order(session, _text(checkout, "id"))
        if order is not None:
            return Handled(
                outcome, order.user_id, reversals.reference_id(checkout.get("payment_intent"))
            )
    if event_type in reversals.REVERSAL_EVENTS:
        payment_intent = reversals.reference_id(_object(event).get("payment_intent"))
        purchase = None
        if payment_intent is not None:
            purchase = await purchases.find_purchase(session, payment_intent)
        if purchase is not None:
            return Handled(outcome, user_id=purchase.user_id)
    return Handled(outcome)


async def awaiting_events(session: AsyncSession, payment_intent: str) -> list[str]:
    """Ids of unprocessed events that wait for the purchase of this payment intent."""
    rows = await session.scalars(
        text(
            'SELECT id FROM "StripeEvent" WHERE "processedAt" IS NULL '
            "AND outcome = 'awaiting_purchase' AND \"paymentIntent\" = :pi "
            'ORDER BY "receivedAt", id'
        ),
        {"pi": payment_intent},
    )
    return list(rows)


async def _lock_payment(session: AsyncSession, payment_intent: str) -> None:
    """Serialize the handlers of one payment until the transaction ends."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"stripe-payment:{payment_intent}"},
    )


def _object(event: Mapping[str, Any]) -> Mapping[str, Any]:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(obj, Mapping):
        raise MalformedEvent(f"event {event.get('id')} has no data.object")
    return obj


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{obj.get('object', 'object')} has no {key}")
    return value
