"""Handlers of stored Stripe events, by type: each moves credits through the ledger only.

Exactly once, in any order and count:
- a purchase is keyed by its Checkout session id, so `checkout.session.completed` (paid) and
  `checkout.session.async_payment_succeeded` of one session credit it once;
- refunds are keyed by cumulative state, `{charge}:refunded:{amount_refunded}`. Stripe sends the
  whole charge with each `charge.refunded`, and `amount_refunded` only grows, so the credits to
  have clawed back are a function of it: each event claws back the difference between that target
  and what refunds of the payment already clawed back, never less than zero. A repeated or older
  event finds nothing left to claw back;
- a dispute's clawback is keyed by the dispute id and its reinstatement by `{dispute}:reinstated`.
  Closing a dispute first makes sure its clawback exists, so a `closed` arriving before `created`
  ends in the same state;
- every handler of a payment takes a transaction-scoped advisory lock on its payment intent, so
  two events of one payment never interleave. A refund or dispute whose purchase is not recorded
  yet is left unprocessed as `awaiting_purchase`; recording the purchase wakes it.

Pro rata: a refund or dispute of `c` cents claws back `credits * c // cents_paid` (rounded down,
so a full refund claws back exactly the credits bought).
"""

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering import ledger
from metering.errors import PermanentError
from metering.models import TransactionType


class Outcome(enum.StrEnum):
    """What handling did; the last three leave the event unprocessed."""

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


class MalformedEvent(PermanentError):
    code = "malformed_event"


@dataclass(frozen=True)
class Handled:
    """A handler's result. After commit, `user_id`'s halt flags are cleared (a purchase), and
    events awaiting the purchase of `payment_intent` are woken."""

    outcome: Outcome
    user_id: str | None = None
    payment_intent: str | None = None


@dataclass(frozen=True)
class Purchase:
    """The PURCHASE row of a payment: `credits` bought for `amount_cents` US cents."""

    user_id: str
    credits: int
    amount_cents: int

    def credits_for(self, cents: int) -> int:
        """The credits `cents` of this payment bought, rounded down."""
        return self.credits * min(max(cents, 0), self.amount_cents) // self.amount_cents


Handler = Callable[[AsyncSession, Mapping[str, Any]], Awaitable[Handled]]
HANDLERS: dict[str, Handler] = {}
"""Handlers by event type; any other type is stored, acknowledged and ignored."""
PURCHASE_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
DISPUTE_GIVES_BACK = frozenset({"won", "warning_closed"})
"""Dispute statuses after which Stripe keeps (or returns) the money: credits are given back."""


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
    """A paid Checkout session of ours: a PURCHASE of its credits, keyed by the session id."""
    checkout = _object(event)
    order = _order(checkout)
    if order is None:
        return Handled(Outcome.IGNORED)
    user_id, credits = order
    if checkout.get("payment_status") != "paid":
        return Handled(Outcome.NO_CREDITS)
    session_id = _text(checkout, "id")
    payment_intent = _id_of(checkout.get("payment_intent"))
    if payment_intent is None:
        raise MalformedEvent(f"paid Checkout session {session_id} has no payment intent")
    amount_cents = _integer(checkout, "amount_total")
    await _lock_payment(session, payment_intent)
    posted = await ledger.post(
        session,
        ledger.Posting(
            user_id=user_id,
            type=TransactionType.PURCHASE,
            amount=credits,
            description=f"Purchase of {credits:,} credits (Stripe Checkout)",
            idempotency_key=session_id,
            metadata={
                "stripeReason": "purchase",
                "stripeEventId": _text(event, "id"),
                "amountTotalCents": amount_cents,
                "currency": checkout.get("currency"),
            },
            stripe_payment_id=payment_intent,
            stripe_checkout_id=session_id,
        ),
    )
    outcome = Outcome.PURCHASED if posted.created else Outcome.ALREADY_RECORDED
    return Handled(outcome, user_id=user_id, payment_intent=payment_intent)


@handles("checkout.session.async_payment_failed")
async def record_failed_payment(session: AsyncSession, event: Mapping[str, Any]) -> Handled:
    """A delayed payment that failed: no credits."""
    order = _order(_object(event))
    return Handled(Outcome.IGNORED if order is None else Outcome.NO_CREDITS)


@handles("charge.refunded")
async def claw_back_refund(session: AsyncSession, event: Mapping[str, Any]) -> Handled:
    """Claw back the credits of the refunded part of a charge not yet clawed back."""
    charge = _object(event)
    payment_intent = _id_of(charge.get("payment_intent"))
    if payment_intent is None:
        return Handled(Outcome.IGNORED)
    await _lock_payment(session, payment_intent)
    purchase = await find_purchase(session, payment_intent)
    if purchase is None:
        return Handled(Outcome.AWAITING_PURCHASE)
    charge_id = _text(charge, "id")
    refunded_cents = _integer(charge, "amount_refunded")
    already = -int(
        await session.scalar(
            text(
                'SELECT COALESCE(SUM(amount), 0) FROM "CreditTransaction" '
                "WHERE \"stripePaymentId\" = :pi AND type = 'ADJUSTMENT' "
                "AND metadata->>'stripeReason' = 'refund'"
            ),
            {"pi": payment_intent},
        )
        or 0
    )
    credits = purchase.credits_for(refunded_cents) - already
    if credits <= 0:
        return Handled(Outcome.NOTHING_TO_CLAW_BACK)
    posted = await ledger.post(
        session,
        ledger.Posting(
            user_id=purchase.user_id,
            type=TransactionType.ADJUSTMENT,
            amount=-credits,
            description=f"Clawback: refund of Stripe charge {charge_id}",
            idempotency_key=f"{charge_id}:refunded:{refunded_cents}",
            metadata={
                "stripeReason": "refund",
                "stripeEventId": _text(event, "id"),
                "chargeId": charge_id,
                "amountRefundedCents": refunded_cents,
            },
            stripe_payment_id=payment_intent,
        ),
    )
    return Handled(Outcome.CLAWED_BACK if posted.created else Outcome.ALREADY_RECORDED)


@handles("charge.dispute.created")
async def claw_back_dispute(session: AsyncSession, event: Mapping[str, Any]) -> Handled:
    """Claw back the credits of the disputed amount, keyed by the dispute id."""
    state = await _dispute_with_clawback(session, event)
    if isinstance(state, Handled):
        return state
    return Handled(Outcome.CLAWED_BACK if state.clawback.created else Outcome.ALREADY_RECORDED)


@handles("charge.dispute.closed")
async def settle_dispute(session: AsyncSession, event: Mapping[str, Any]) -> Handled:
    """A closed dispute: its clawback stands (lost), or is given back (won, inquiry closed)."""
    state = await _dispute_with_clawback(session, event)
    if isinstance(state, Handled):
        return state
    dispute = _object(event)
    if dispute.get("status") not in DISPUTE_GIVES_BACK:
        created = state.clawback.created
        return Handled(Outcome.CLAWED_BACK if created else Outcome.ALREADY_RECORDED)
    dispute_id = _text(dispute, "id")
    given = await ledger.post(
        session,
        ledger.Posting(
            user_id=state.purchase.user_id,
            type=TransactionType.ADJUSTMENT,
            amount=-state.clawback.amount,
            description=f"Stripe dispute {dispute_id} closed as {dispute['status']}: credits back",
            idempotency_key=f"{dispute_id}:reinstated",
            metadata={
                "stripeReason": "dispute_reinstated",
                "stripeEventId": _text(event, "id"),
                "disputeId": dispute_id,
            },
            stripe_payment_id=state.payment_intent,
        ),
    )
    return Handled(Outcome.REINSTATED if given.created else Outcome.ALREADY_RECORDED)


def follow_up(event_type: str, event: Mapping[str, Any], outcome: Outcome) -> Handled:
    """What a processed event still asks after commit (a purchase's halt flags and wake-ups)."""
    if event_type in PURCHASE_EVENTS and outcome in (Outcome.PURCHASED, Outcome.ALREADY_RECORDED):
        checkout = _object(event)
        order = _order(checkout)
        if order is not None:
            return Handled(outcome, order[0], _id_of(checkout.get("payment_intent")))
    return Handled(outcome)


async def find_purchase(session: AsyncSession, payment_intent: str) -> Purchase | None:
    """The PURCHASE recorded for a payment intent, if any."""
    row = (
        await session.execute(
            text(
                'SELECT "userId", amount, metadata FROM "CreditTransaction" '
                "WHERE \"stripePaymentId\" = :pi AND type = 'PURCHASE' "
                'ORDER BY "createdAt", id LIMIT 1'
            ),
            {"pi": payment_intent},
        )
    ).first()
    if row is None:
        return None
    cents = (row.metadata or {}).get("amountTotalCents")
    if not isinstance(cents, int) or cents <= 0:
        raise PermanentError(
            f"the purchase of payment {payment_intent} records no price in cents",
            code="purchase_without_price",
        )
    return Purchase(row.userId, row.amount, cents)


async def awaiting_events(session: AsyncSession, payment_intent: str) -> list[str]:
    """Ids of unprocessed events that wait for the purchase of this payment intent."""
    rows = await session.scalars(
        text(
            'SELECT id FROM "StripeEvent" WHERE "processedAt" IS NULL '
            "AND outcome = 'awaiting_purchase' "
            "AND payload->'data'->'object'->>'payment_intent' = :pi "
            'ORDER BY "receivedAt", id'
        ),
        {"pi": payment_intent},
    )
    return list(rows)


@dataclass(frozen=True)
class _Dispute:
    payment_intent: str
    purchase: Purchase
    clawback: ledger.PostedTransaction


async def _dispute_with_clawback(
    session: AsyncSession, event: Mapping[str, Any]
) -> Handled | _Dispute:
    """A dispute event's payment, purchase and clawback (posted now if it was not yet), or the
    outcome when there is nothing to claw back: not ours, purchase not recorded yet, 0 credits."""
    payment_intent = _id_of(_object(event).get("payment_intent"))
    if payment_intent is None:
        return Handled(Outcome.IGNORED)
    await _lock_payment(session, payment_intent)
    purchase = await find_purchase(session, payment_intent)
    if purchase is None:
        return Handled(Outcome.AWAITING_PURCHASE)
    clawback = await _dispute_clawback(session, event, purchase, payment_intent)
    if clawback is None:
        return Handled(Outcome.NOTHING_TO_CLAW_BACK)
    return _Dispute(payment_intent, purchase, clawback)


async def _dispute_clawback(
    session: AsyncSession, event: Mapping[str, Any], purchase: Purchase, payment_intent: str
) -> ledger.PostedTransaction | None:
    """The dispute's clawback row, posted now if it was not yet; None if it is worth 0 credits."""
    dispute = _object(event)
    dispute_id = _text(dispute, "id")
    disputed_cents = _integer(dispute, "amount")
    credits = purchase.credits_for(disputed_cents)
    if credits == 0:
        return None
    return await ledger.post(
        session,
        ledger.Posting(
            user_id=purchase.user_id,
            type=TransactionType.ADJUSTMENT,
            amount=-credits,
            description=f"Clawback: Stripe dispute {dispute_id}",
            idempotency_key=dispute_id,
            metadata={
                "stripeReason": "dispute",
                "stripeEventId": _text(event, "id"),
                "disputeId": dispute_id,
                "chargeId": _id_of(dispute.get("charge")),
                "amountDisputedCents": disputed_cents,
            },
            stripe_payment_id=payment_intent,
        ),
    )


async def _lock_payment(session: AsyncSession, payment_intent: str) -> None:
    """Serialize the handlers of one payment until the transaction ends."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"stripe-payment:{payment_intent}"},
    )


def _order(checkout: Mapping[str, Any]) -> tuple[str, int] | None:
    """(user id, credits) of a Checkout session we created; None for anyone else's."""
    metadata = checkout.get("metadata") or {}
    user_id, credits = metadata.get("userId"), metadata.get("credits")
    if checkout.get("mode") != "payment" or not user_id or credits is None:
        return None
    reference = checkout.get("client_reference_id")
    if reference is not None and reference != user_id:
        raise MalformedEvent(f"Checkout session {checkout.get('id')} names two users")
    if not isinstance(credits, str) or not credits.isdigit() or int(credits) <= 0:
        raise MalformedEvent(f"Checkout session {checkout.get('id')} has credits {credits!r}")
    return str(user_id), int(credits)


def _object(event: Mapping[str, Any]) -> Mapping[str, Any]:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(obj, Mapping):
        raise MalformedEvent(f"event {event.get('id')} has no data.object")
    return obj


def _id_of(value: Any) -> str | None:
    """The id of a reference, whether Stripe sent it as an id or as an expanded object."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{obj.get('object', 'object')} has no {key}")
    return value


def _integer(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedEvent(f"{obj.get('object', 'object')} {obj.get('id')} has no valid {key}")
    return value
