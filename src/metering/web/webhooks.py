"""`POST /webhooks/stripe`: verify, store the raw event once, enqueue it, answer at once.

The event is committed before it is enqueued. If the enqueue fails the answer is still 200:
the event is stored, and beat re-enqueues stored events left unprocessed.
"""

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from metering.errors import ConfigurationError
from metering.ops.db import session_scope
from metering.ops.logs import get_logger
from metering.stripe.processing import describe
from metering.stripe.webhooks import store_event, verify_event
from metering.web.deps import State

router = APIRouter(tags=["stripe"])
log = get_logger(__name__)


@router.post("/webhooks/stripe")
async def receive_stripe_event(request: Request, state: State) -> dict[str, Any]:
    """Store a signed Stripe event; 400 (nothing stored) unless genuine, recent and well formed."""
    secret = state.settings.stripe_webhook_secret.get_secret_value()
    if not secret:
        raise ConfigurationError("STRIPE_WEBHOOK_SECRET is not set", code="webhook_not_configured")
    event = verify_event(
        await request.body(),
        request.headers.get("stripe-signature"),
        secret,
        tolerance_s=state.settings.stripe_webhook_tolerance_s,
    )
    async with session_scope(state.sessions) as session:
        stored = await store_event(session, event)
    enqueued = False
    if not stored.processed:
        try:
            await run_in_threadpool(state.enqueue, event.id)
            enqueued = True
        except Exception as error:
            log.warning(
                "stripe event stored but not enqueued; beat will re-enqueue it",
                event_id=event.id,
                error=describe(error),
            )
    return {"received": True, "id": event.id, "duplicate": not stored.created, "enqueued": enqueued}


def enqueue_with_celery(event_id: str) -> None:
    """Send `metering.stripe.process_event` to the `stripe` queue, with a short publish retry."""
    # Imported on first use: the Celery app reads settings when its module is imported.
    from metering.tasks.app import STRIPE_QUEUE
    from metering.tasks.stripe import process_event

    process_event.apply_async(
        (event_id,),
        queue=STRIPE_QUEUE,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
    )
