"""Is this Checkout session ours, and does it match what we sold? And the purchase of a payment.

A session is credited only when metering created it: `POST /checkout/sessions` records every
session it creates (`record_order`, table `StripeCheckoutSession`) before it hands out the url, so
a session that can be paid at all is recorded first. The credits, the buyer and the price come
from the record, never from the session's metadata, and the session must agree with the record:
- `mode` is `payment`; metadata `userId` and `credits` and `client_reference_id`, where present,
  name the recorded buyer and credits;
- `currency` is the recorded currency, and `amount_subtotal` the recorded amount, which must be
  the price of the credits at the configured price (`checkout.price_cents`);
- discounts: `amount_total` may be lower than the subtotal by exactly
  `total_details.amount_discount` (a discount the operator gave in Stripe); the credits are still
  granted in full, and refunds claw back pro rata of the amount paid. Tax or shipping, which
  metering never asks for, must be zero.

Anything else that claims to be a credit purchase (a session with our metadata but no record, or
one that disagrees with its record) is `Quarantined`: no credits, the reason shown by
`metering stripe events --failed`. A session with no trace of us is someone else's: ignored.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.errors import PermanentError
from metering.ops.models import StripeCheckoutSession
from metering.stripe import checkout as selling

ORDER_KEYS = ("userId", "credits")
"""Metadata keys metering puts on its sessions; a session carrying one claims to be ours."""


class Quarantined(PermanentError):
    """An event that must not move credits until an operator has looked at it."""

    code = "quarantined"


@dataclass(frozen=True)
class Order:
    """A Checkout session metering created: `credits` for `amount_cents` of `currency`."""

    session_id: str
    user_id: str
    credits: int
    amount_cents: int
    currency: str


@dataclass(frozen=True)
class Paid:
    """What a verified session paid: `amount_cents` after `discount_cents`, in US cents."""

    order: Order
    amount_cents: int
    discount_cents: int


@dataclass(frozen=True)
class Purchase:
    """The PURCHASE row of a payment: `credits` bought for `amount_cents` paid."""

    user_id: str
    credits: int
    amount_cents: int

    def credits_for(self, cents: int) -> int:
        """The credits `cents` of this payment bought, rounded down; at most `credits`."""
        return self.credits * min(max(cents, 0), self.amount_cents) // self.amount_cents


async def record_order(session: AsyncSession, order: Order) -> None:
    """Record a session metering created (in the caller's transaction)."""
    session.add(
        StripeCheckoutSession(
            id=order.session_id,
            user_id=order.user_id,
            credits=order.credits,
            amount_cents=order.amount_cents,
            currency=order.currency,
        )
    )
    await session.flush()


async def find_order(session: AsyncSession, session_id: str) -> Order | None:
    row = await session.get(StripeCheckoutSession, session_id)
    if row is None:
        return None
    return Order(row.id, row.user_id, row.credits, row.amount_cents, row.currency)


async def order_of(session: AsyncSession, checkout: Mapping[str, Any]) -> Order | None:
    """The recorded order of a session; None if the session is not ours and does not claim to
    be; `Quarantined` if it claims to be ours without a record, or disagrees with its record."""
    session_id = checkout.get("id")
    metadata = checkout.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    order = await find_order(session, session_id) if isinstance(session_id, str) else None
    if order is None:
        if any(key in metadata for key in ORDER_KEYS):
            raise Quarantined(
                f"Checkout session {session_id} carries credit metadata but metering has no "
                "record of creating it: not credited",
                code="unrecorded_session",
            )
        return None
    mismatches = []
    if checkout.get("mode") != "payment":
        mismatches.append(f"mode {checkout.get('mode')!r}")
    for label, value, expected in (
        ("metadata userId", metadata.get("userId"), order.user_id),
        ("client_reference_id", checkout.get("client_reference_id"), order.user_id),
        ("metadata credits", metadata.get("credits"), str(order.credits)),
    ):
        if value is not None and value != expected:
            mismatches.append(f"{label} {value!r} (recorded {expected!r})")
    if mismatches:
        raise Quarantined(
            f"Checkout session {session_id} disagrees with its record: {', '.join(mismatches)}",
            code="session_mismatch",
        )
    return order


def verify_payment(order: Order, checkout: Mapping[str, Any]) -> Paid:
    """What a paid session of `order` paid; `Quarantined` unless currency and amounts match."""
    session_id = order.session_id
    currency = checkout.get("currency")
    if currency != order.currency:
        raise Quarantined(
            f"Checkout session {session_id} was paid in {currency!r}, "
            f"its {order.credits:,} credits are sold in {order.currency!r}",
            code="currency_mismatch",
        )
    price = selling.price_cents(order.credits)
    subtotal, total = _cents(checkout, "amount_subtotal"), _cents(checkout, "amount_total")
    details = checkout.get("total_details")
    details = details if isinstance(details, Mapping) else {}
    discount, tax, shipping = (
        _cents(details, key) or 0 for key in ("amount_discount", "amount_tax", "amount_shipping")
    )
    problems = []
    if order.amount_cents != price:
        problems.append(f"recorded at {order.amount_cents} cents, the price is {price}")
    if subtotal != price:
        problems.append(f"subtotal {subtotal} cents, the price is {price}")
    if tax or shipping:
        problems.append(f"tax {tax} and shipping {shipping} cents, metering charges neither")
    if total is None or subtotal is None or total != subtotal - discount:
        problems.append(f"total {total} cents is not subtotal {subtotal} less discount {discount}")
    elif total == 0:
        problems.append("total 0 cents")
    if problems or total is None:
        raise Quarantined(
            f"Checkout session {session_id} does not match {order.credits:,} credits: "
            + "; ".join(problems),
            code="amount_mismatch",
        )
    return Paid(order, total, discount)


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


def _cents(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Quarantined(
            f"Checkout session has an invalid {key}: {value!r}", code="amount_mismatch"
        )
    return value
