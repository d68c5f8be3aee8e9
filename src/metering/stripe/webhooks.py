"""Receiving webhooks: verify Stripe's signature, then store the raw event once.

Verification uses the stripe library (`WebhookSignature.verify_header`): an HMAC-SHA256 of
`"{t}.{body}"` under the endpoint's secret, and `t` no older than the tolerance. Stripe's library
accepts any future `t`; we also refuse one further ahead than the tolerance, so that a signed
delivery can never stay replayable for longer than the tolerance.
"""

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from metering.errors import PermanentError
from metering.ops.models import StripeEvent
from metering.stripe.reversals import reference_id


class InvalidWebhook(PermanentError):
    """A delivery that is not a genuine, recent, well-formed Stripe event: refuse, store nothing."""

    code = "invalid_webhook"


@dataclass(frozen=True)
class ReceivedEvent:
    """A verified Stripe event: its id, type, mode and the whole raw JSON object."""

    id: str
    type: str
    livemode: bool
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredEvent:
    """`created` is False when the event id had been stored before."""

    id: str
    created: bool
    processed: bool


def verify_event(
    body: bytes, signature: str | None, secret: str, *, tolerance_s: int, now: float | None = None
) -> ReceivedEvent:
    """The event of a signed delivery; `InvalidWebhook` for any fault (messages hold no secret)."""
    try:
        stripe.WebhookSignature.verify_header(body, signature, secret, tolerance_s)
    except stripe.SignatureVerificationError as error:
        raise InvalidWebhook(f"signature verification failed: {_reason(error)}") from error
    except UnicodeDecodeError as error:
        raise InvalidWebhook("the body is not UTF-8") from error
    assert signature is not None
    now = time.time() if now is None else now
    if _timestamp(signature) > now + tolerance_s:
        raise InvalidWebhook("signature verification failed: timestamp is in the future")
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise InvalidWebhook("the body is not JSON") from error
    if not isinstance(payload, dict) or payload.get("object") != "event":
        raise InvalidWebhook("the body is not a Stripe event")
    event_id, event_type, livemode = payload.get("id"), payload.get("type"), payload.get("livemode")
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
        raise InvalidWebhook("the event has no id or type")
    if not isinstance(livemode, bool) or not isinstance(payload.get("data"), dict):
        raise InvalidWebhook("the event has no livemode or data")
    return ReceivedEvent(event_id, event_type, livemode, payload)


async def store_event(session: AsyncSession, event: ReceivedEvent) -> StoredEvent:
    """Insert the raw event unless its id is already stored (`ON CONFLICT DO NOTHING`), with the
    payment intent its object names."""
    inserted = await session.scalar(
        insert(StripeEvent)
        .values(
            id=event.id,
            type=event.type,
            livemode=event.livemode,
            payload=event.payload,
            payment_intent=payment_intent_of(event.payload),
        )
        .on_conflict_do_nothing(index_elements=[StripeEvent.id])
        .returning(StripeEvent.id)
    )
    if inserted is not None:
        return StoredEvent(event.id, created=True, processed=False)
    processed_at = await session.scalar(
        select(StripeEvent.processed_at).where(StripeEvent.id == event.id)
    )
    return StoredEvent(event.id, created=False, processed=processed_at is not None)


def payment_intent_of(payload: Mapping[str, Any]) -> str | None:
    """The payment intent an event's object belongs to, if it names one (as an id, or as an
    expanded object holding it)."""
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    return reference_id(obj.get("payment_intent")) if isinstance(obj, Mapping) else None


def _timestamp(signature: str) -> int:
    for item in signature.split(","):
        key, _, value = item.partition("=")
        if key.strip() == "t":
            return int(value)
    raise InvalidWebhook("signature verification failed: no timestamp")


def _reason(error: stripe.SignatureVerificationError) -> str:
    # The library's messages name the fault, never the secret; keep the first sentence.
    message = error.user_message or "invalid signature"
    return message.split(". ")[0].rstrip(".")
