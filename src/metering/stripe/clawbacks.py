"""Clawbacks of one payment: keep its ledger rows equal to what its reversals hold.

Called under the payment's advisory lock, so a payment's clawbacks are serialized. The payment's
state is folded (`reversals`) from its processed events plus the one being handled; for each
reversal whose state changes, one ADJUSTMENT brings the payment's net clawback (the sum of its
ADJUSTMENT rows, negated) to `purchase.credits_for(held cents)`: negative to claw back, positive
to give back. That target never exceeds the credits bought, so neither does the net clawback, in
any order and count of events. Each row is keyed by its reversal's change (`reversals.changes`):
a refund's clawback by the refund id, a dispute's by the dispute id, their give-backs by
`{id}:reinstated`. Every row carries `stripePaymentId`.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import Text

from metering.ledger import journal
from metering.ops.logs import get_logger
from metering.ops.models import TransactionType
from metering.stripe import reversals
from metering.stripe.purchases import Purchase
from metering.stripe.reversals import Kind, Reversal

log = get_logger(__name__)

_WHAT = {Kind.REFUND: "refund", Kind.DISPUTE: "dispute", Kind.UNNAMED: "refunds of charge"}


@dataclass(frozen=True)
class Settled:
    """The rows one event posted; `credits` is their sum (< 0: clawed back, > 0: given back)."""

    posted: list[journal.PostedTransaction]

    @property
    def credits(self) -> int:
        return sum(p.amount for p in self.posted)


async def settle(
    session: AsyncSession,
    event: Mapping[str, Any],
    observed: list[Reversal],
    purchase: Purchase,
    payment_intent: str,
) -> Settled:
    """Post what the reversals `observed` in `event` change for the payment (caller holds its
    lock, in the transaction that marks the event processed)."""
    before = await payment_state(session, payment_intent, excluding=str(event.get("id")))
    after = reversals.fold(before, observed)
    clawed_back = await net_clawback(session, payment_intent)
    state = dict(before)
    posted = []
    for key, reversal in reversals.changes(before, after):
        state[reversal.source] = reversal
        held = reversals.held_cents(state)
        target = purchase.credits_for(held)
        if target == clawed_back:
            continue
        row = await _post_towards(session, purchase, payment_intent, event, reversal, key, held)
        if row is not None:
            posted.append(row)
        clawed_back = target
    return Settled(posted)


async def _post_towards(
    session: AsyncSession,
    purchase: Purchase,
    payment_intent: str,
    event: Mapping[str, Any],
    reversal: Reversal,
    key: str,
    held: int,
) -> journal.PostedTransaction | None:
    """Post the ADJUSTMENT that brings the payment's net clawback to the credits of `held` cents.

    A key already holding a row of an earlier version is never reused: what is left goes under a
    key naming the target, so the net clawback still ends exactly at it.
    """
    target = purchase.credits_for(held)
    for attempt_key in (key, f"{key}:to:{target}"):
        amount = await net_clawback(session, payment_intent) - target
        if amount == 0:
            return None
        try:
            row = await journal.post(
                session,
                journal.Posting(
                    user_id=purchase.user_id,
                    type=TransactionType.ADJUSTMENT,
                    amount=amount,
                    description=_description(reversal, amount),
                    idempotency_key=attempt_key,
                    metadata={
                        "stripeReason": reversal.kind.value,
                        "stripeEventId": event.get("id"),
                        "stripeStatus": reversal.status,
                        "reversalId": reversal.source,
                        "chargeId": reversal.charge,
                        "reversalCents": reversal.cents,
                        "heldCents": held,
                        "clawedBackCredits": target,
                    },
                    stripe_payment_id=payment_intent,
                ),
            )
        except journal.KeyConflict:
            row = None
        if row is not None and row.created:
            return row
        log.warning("clawback key taken by an earlier row", key=attempt_key)
    raise journal.KeyConflict(f"clawback keys {key!r} and its successor are both taken")


async def payment_state(
    session: AsyncSession, payment_intent: str, *, excluding: str | None = None
) -> dict[str, Reversal]:
    """The reversals of a payment, folded from its processed events."""
    rows = await session.execute(
        text(
            'SELECT id, type, payload FROM "StripeEvent" WHERE "paymentIntent" = :pi '
            'AND "processedAt" IS NOT NULL AND type = ANY(:types) AND id <> :excluding'
        ).bindparams(bindparam("types", type_=ARRAY(Text))),
        {
            "pi": payment_intent,
            "types": list(reversals.REVERSAL_EVENTS),
            "excluding": excluding or "",
        },
    )
    state: dict[str, Reversal] = {}
    for row in rows:
        obj = (row.payload.get("data") or {}).get("object") or {}
        try:
            state = reversals.fold(state, reversals.observe(row.type, obj))
        except reversals.MalformedReversal as error:
            # Processed by an earlier version that accepted it; it holds nothing we can count.
            log.warning("stripe event skipped in payment state", event_id=row.id, error=str(error))
    return state


async def net_clawback(session: AsyncSession, payment_intent: str) -> int:
    """Credits clawed back from a payment so far, net of those given back (>= 0)."""
    total = await session.scalar(
        text(
            'SELECT COALESCE(SUM(amount), 0) FROM "CreditTransaction" '
            "WHERE \"stripePaymentId\" = :pi AND type = 'ADJUSTMENT'"
        ),
        {"pi": payment_intent},
    )
    return -int(total or 0)


def _description(reversal: Reversal, amount: int) -> str:
    what = f"Stripe {_WHAT[reversal.kind]} {reversal.source}"
    if amount < 0:
        return f"Clawback: {what} ({reversal.status})"
    return f"Credits back: {what} ({reversal.status})"
