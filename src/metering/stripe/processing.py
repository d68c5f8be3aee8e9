"""Processing stored Stripe events: one transaction per event, then follow-ups after commit.

An event is handled under a row lock on its `StripeEvent` row and marked processed in the same
transaction as its ledger rows, so a second delivery, a retry or a replay finds it processed and
moves nothing. A failure is recorded on the row (`attempts`, `lastError`, outcome `retrying`, or
`failed` once permanent or after `MAX_ATTEMPTS`, or `quarantined` for a purchase that is not
provably ours), for operators to see and replay.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.budget.halt import sync_halts
from metering.errors import MeteringError, PermanentError, TransientError
from metering.ops.db import first_line, run_in_transaction
from metering.ops.logs import redact_text
from metering.ops.metrics import observe_stripe_event
from metering.ops.models import StripeEvent
from metering.ops.redis_client import AsyncRedis
from metering.stripe import handlers
from metering.stripe.handlers import Outcome
from metering.stripe.purchases import Quarantined
from metering.stripe.webhooks import payment_intent_of

MAX_ATTEMPTS = 10
"""After this many failed attempts an event is `failed`: no longer retried, only replayed."""
MAX_ERROR_CHARS = 1000
RETRIED_OUTCOMES = (Outcome.RETRYING.value,)
ATTENTION_OUTCOMES = (
    Outcome.FAILED.value,
    Outcome.RETRYING.value,
    Outcome.QUARANTINED.value,
    Outcome.AWAITING_PURCHASE.value,
)
"""Unprocessed events an operator may have to look at (`metering stripe events --failed`)."""


class UnknownEvent(PermanentError):
    code = "unknown_event"


class EventFailed(PermanentError):
    """Handling failed for good (a permanent error, or attempts used up); replay after a fix."""

    code = "stripe_event_failed"


class EventQuarantined(EventFailed):
    """The event may not move credits until an operator has looked at it; replay after a fix."""

    code = "stripe_event_quarantined"


class EventRetrying(TransientError):
    """Handling failed and will be tried again."""

    code = "stripe_event_retrying"


@dataclass(frozen=True)
class Processed:
    """What processing one event did. `user_id`'s halt flags are to be cleared after commit, and
    `wake_event_ids` (events awaiting this purchase) to be processed next."""

    event_id: str
    type: str
    outcome: Outcome
    already_processed: bool
    user_id: str | None = None
    wake_event_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "type": self.type,
            "outcome": self.outcome.value,
            "already_processed": self.already_processed,
            "woken": self.wake_event_ids,
        }


@dataclass(frozen=True)
class EventRow:
    """A stored event as operators see it. `overdue`: awaiting its purchase for longer than the
    configured bound (the purchase was lost, quarantined, or is not ours)."""

    id: str
    type: str
    livemode: bool
    received_at: datetime
    processed_at: datetime | None
    outcome: str | None
    attempts: int
    last_error: str | None
    payment_intent: str | None
    overdue: bool


async def process_event(
    sessions: async_sessionmaker[AsyncSession], event_id: str, *, lock_timeout_ms: int
) -> Processed:
    """Handle a stored event exactly once; raise `EventRetrying` or `EventFailed` on failure."""

    async def work(session: AsyncSession) -> Processed:
        await session.execute(
            text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": f"{lock_timeout_ms}ms"}
        )
        row = await session.get(StripeEvent, event_id, with_for_update=True)
        if row is None:
            raise UnknownEvent(f"no stored Stripe event {event_id}")
        if row.processed_at is not None:
            outcome = Outcome(row.outcome or Outcome.IGNORED)
            handled = await handlers.follow_up(session, row.type, row.payload, outcome)
            already = True
        else:
            handled = await handlers.handler_for(row.type)(session, row.payload)
            already = False
            done = handled.outcome is not Outcome.AWAITING_PURCHASE
            await session.execute(
                update(StripeEvent)
                .where(StripeEvent.id == event_id)
                .values(
                    attempts=StripeEvent.attempts + 1,
                    outcome=handled.outcome.value,
                    processed_at=func.now() if done else None,
                    # Events stored before the column existed (or by an older web) get it here.
                    payment_intent=payment_intent_of(row.payload),
                )
            )
        wake: list[str] = []
        if handled.payment_intent is not None:
            wake = await handlers.awaiting_events(session, handled.payment_intent)
        return Processed(event_id, row.type, handled.outcome, already, handled.user_id, wake)

    try:
        processed = await run_in_transaction(sessions, work)
    except UnknownEvent:
        raise
    except Exception as error:
        event_type, outcome = await _record_failure(sessions, event_id, error)
        observe_stripe_event(event_type, outcome.value)
        message = f"Stripe event {event_id}: {describe(error)}"
        if outcome is Outcome.QUARANTINED:
            raise EventQuarantined(message) from error
        if outcome is Outcome.FAILED:
            raise EventFailed(message) from error
        raise EventRetrying(message) from error
    observe_stripe_event(
        processed.type,
        "already_processed" if processed.already_processed else processed.outcome.value,
    )
    return processed


async def after_commit(
    redis: AsyncRedis,
    sessions: async_sessionmaker[AsyncSession],
    prefix: str,
    processed: Processed,
    halt_threshold: int,
) -> list[str]:
    """Bring the buyer's halt flags in line with the balance just committed (`halt.sync_halts`):
    lifted if it is now above `halt_threshold`, kept (or raised, after a clawback) otherwise.
    Returns the experiment ids lifted."""
    if processed.user_id is None:
        return []
    try:
        change = await sync_halts(redis, sessions, prefix, [processed.user_id], halt_threshold)
        return change.lifted
    except RedisError as error:
        raise TransientError(
            f"could not clear the halt flags of user {processed.user_id}: {error}"
        ) from error


async def requeueable_events(
    session: AsyncSession, *, older_than_s: int, limit: int = 500
) -> list[str]:
    """Unprocessed events beat should enqueue again: never handled (their enqueue may have been
    lost), retrying, or awaiting a purchase that is now recorded. Not `failed` ones."""
    rows = await session.scalars(
        text(
            'SELECT e.id FROM "StripeEvent" e WHERE e."processedAt" IS NULL '
            "AND e.\"receivedAt\" < (now() AT TIME ZONE 'UTC') "
            "- CAST(:age AS integer) * interval '1 second' "
            "AND (e.outcome IS NULL OR e.outcome = ANY(:retried) "
            "OR (e.outcome = 'awaiting_purchase' AND EXISTS ("
            "SELECT 1 FROM \"CreditTransaction\" t WHERE t.type = 'PURCHASE' "
            'AND t."stripePaymentId" = e."paymentIntent"))) '
            'ORDER BY e."receivedAt", e.id LIMIT :limit'
        ),
        {"age": older_than_s, "retried": list(RETRIED_OUTCOMES), "limit": limit},
    )
    return list(rows)


async def list_events(
    session: AsyncSession,
    *,
    failed_only: bool = False,
    awaiting_bound_s: int,
    limit: int = 50,
) -> list[EventRow]:
    """The latest stored events, newest first. `failed_only`: those an operator may have to look
    at (failed, retrying, quarantined, awaiting their purchase). An event awaiting its purchase
    for longer than `awaiting_bound_s` seconds is flagged `overdue`."""
    query = select(StripeEvent).order_by(StripeEvent.received_at.desc(), StripeEvent.id)
    if failed_only:
        query = query.where(
            StripeEvent.processed_at.is_(None),
            StripeEvent.outcome.in_(ATTENTION_OUTCOMES),
        )
    now = await session.scalar(select(func.timezone("UTC", func.now())))
    assert isinstance(now, datetime)
    bound = timedelta(seconds=awaiting_bound_s)
    rows = await session.scalars(query.limit(limit))
    return [
        EventRow(
            r.id,
            r.type,
            r.livemode,
            r.received_at,
            r.processed_at,
            r.outcome,
            r.attempts,
            r.last_error,
            r.payment_intent,
            r.processed_at is None
            and r.outcome == Outcome.AWAITING_PURCHASE.value
            and now - r.received_at > bound,
        )
        for r in rows
    ]


def describe(error: BaseException) -> str:
    """A one-line, secret-free account of an error, for `lastError` and logs."""
    if isinstance(error, MeteringError):
        text_ = f"{error.code}: {error.message}"
    elif isinstance(error, DBAPIError):
        text_ = f"database error: {first_line(error)}"
    else:
        text_ = f"{type(error).__name__}: {error}"
    return redact_text(text_)[:MAX_ERROR_CHARS]


async def _record_failure(
    sessions: async_sessionmaker[AsyncSession], event_id: str, error: BaseException
) -> tuple[str, Outcome]:
    """Record the failure on the event's row; returns its type and its outcome now."""

    async def work(session: AsyncSession) -> tuple[str, Outcome]:
        result = await session.execute(
            text(
                'UPDATE "StripeEvent" SET attempts = attempts + 1, "lastError" = :error, '
                "outcome = CASE WHEN :quarantined THEN 'quarantined' "
                "WHEN :permanent OR attempts + 1 >= :max THEN 'failed' ELSE 'retrying' END "
                'WHERE id = :id AND "processedAt" IS NULL RETURNING type, outcome'
            ),
            {
                "id": event_id,
                "error": describe(error),
                "quarantined": isinstance(error, Quarantined),
                "permanent": isinstance(error, PermanentError),
                "max": MAX_ATTEMPTS,
            },
        )
        row = result.one_or_none()
        if row is None:  # processed meanwhile by another delivery
            return "unknown", Outcome.RETRYING
        return row.type, Outcome(row.outcome)

    return await run_in_transaction(sessions, work)
