"""Stripe deliveries for tests: fixture objects wrapped in events, signed as Stripe signs them."""

import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ops.db import session_scope
from metering.ops.models import StripeEvent, User
from metering.stripe import processing
from metering.stripe.processing import Processed
from metering.stripe.purchases import Order, record_order
from metering.stripe.webhooks import ReceivedEvent, store_event

FIXTURES = Path(__file__).parent / "fixtures"
"""Stripe API reference examples of each object, as Stripe shapes them."""
WEBHOOK_SECRET = "whsec_testsecret0123456789abcdef"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def sign(body: str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header: `t=...,v1=HMAC-SHA256(secret, "{t}.{body}")`."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def new_id(prefix: str) -> str:
    return f"{prefix}_test_{uuid.uuid4().hex[:20]}"


def event(event_type: str, obj: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """The shared event fixture around `obj`, with a fresh id."""
    wrapped = fixture("event")
    wrapped.update(id=event_id or new_id("evt"), type=event_type, data={"object": obj})
    return wrapped


def checkout_session(
    user_id: str, credits: int, *, paid: bool = True, payment_intent: str | None = None
) -> dict[str, Any]:
    """A completed Checkout session of ours, as the fixture shapes it."""
    session = fixture("checkout_session")
    session.update(
        id=new_id("cs"),
        client_reference_id=user_id,
        metadata={"userId": user_id, "credits": str(credits)},
        payment_intent=payment_intent or new_id("pi"),
        payment_status="paid" if paid else "unpaid",
        status="complete",
        amount_total=credits // 10,
        amount_subtotal=credits // 10,
        currency="usd",
        total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        currency_conversion=None,
        shipping_cost=None,
    )
    return session


async def record(session: AsyncSession, checkout: dict[str, Any]) -> dict[str, Any]:
    """Record `checkout` as a session metering created (as `POST /checkout/sessions` does)."""
    metadata = checkout["metadata"]
    credits = int(metadata["credits"])
    await record_order(
        session, Order(checkout["id"], metadata["userId"], credits, credits // 10, "usd")
    )
    return checkout


def charge(
    payment_intent: str,
    amount: int,
    amount_refunded: int,
    listed: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A charge as `charge.refunded` carries it. Without `listed`, as API versions since
    2022-11-15 send it (no `refunds`); with it, as older versions do (the list of its refunds)."""
    obj = fixture("charge")
    obj.update(
        id=f"ch_{payment_intent}",
        payment_intent=payment_intent,
        amount=amount,
        amount_captured=amount,
        captured=True,
        amount_refunded=amount_refunded,
        refunded=amount_refunded == amount,
    )
    if listed is None:
        del obj["refunds"]
    else:
        obj["refunds"] = {
            **obj["refunds"],
            "data": listed,
            "url": f"/v1/charges/{obj['id']}/refunds",
        }
    return obj


def refund(
    payment_intent: str, amount: int, status: str = "succeeded", refund_id: str | None = None
) -> dict[str, Any]:
    """A refund object, as `charge.refund.updated` and `refund.*` events carry it."""
    obj = fixture("refund")
    obj.update(
        id=refund_id or new_id("re"),
        charge=f"ch_{payment_intent}",
        payment_intent=payment_intent,
        amount=amount,
        status=status,
    )
    return obj


def dispute(
    payment_intent: str, amount: int, status: str = "needs_response", dispute_id: str | None = None
) -> dict[str, Any]:
    obj = fixture("dispute")
    obj.update(
        id=dispute_id or new_id("dp"),
        charge=f"ch_{payment_intent}",
        payment_intent=payment_intent,
        amount=amount,
        status=status,
    )
    return obj


def body_of(evt: dict[str, Any]) -> str:
    return json.dumps(evt, indent=2)


CREDITS = 10_000
"""$10.00, that is 1,000 cents."""


CENTS = CREDITS // 10


async def deliver(sessions: async_sessionmaker[AsyncSession], evt: dict[str, Any]) -> Processed:
    """Store an event as the webhook does, then process it as the task does."""
    async with session_scope(sessions) as session:
        await store_event(session, ReceivedEvent(evt["id"], evt["type"], evt["livemode"], evt))
    return await process(sessions, evt["id"])


async def process(sessions: async_sessionmaker[AsyncSession], event_id: str) -> Processed:
    processed = await processing.process_event(sessions, event_id, lock_timeout_ms=5_000)
    for woken in processed.wake_event_ids:
        await process(sessions, woken)
    return processed


async def ours(sessions: async_sessionmaker[AsyncSession], checkout: dict[str, Any]) -> Any:
    """`checkout`, recorded as a session metering created."""
    async with session_scope(sessions) as session:
        return await record(session, checkout)


async def balance(sessions: async_sessionmaker[AsyncSession], user_id: str) -> int:
    async with session_scope(sessions) as session:
        user = await session.get(User, user_id)
        assert user is not None
        return user.credits


async def stored(sessions: async_sessionmaker[AsyncSession], event_id: str) -> StripeEvent:
    async with session_scope(sessions) as session:
        row = await session.get(StripeEvent, event_id)
        assert row is not None
        return row
