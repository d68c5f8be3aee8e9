"""Stripe tasks: process one stored event, and (from beat) re-enqueue stored unprocessed events."""

from typing import Any

from metering.errors import TransientError
from metering.ops.logs import get_logger
from metering.stripe import processing
from metering.stripe.follow_up import follow_up
from metering.tasks import runtime
from metering.tasks.app import STRIPE_QUEUE, app

PROCESS_EVENT = "metering.stripe.process_event"
REQUEUE_UNPROCESSED = "metering.stripe.requeue_unprocessed"

log = get_logger(__name__)


@app.task(
    name=PROCESS_EVENT,
    acks_late=True,
    autoretry_for=(TransientError,),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=processing.MAX_ATTEMPTS,
)
def process_event(event_id: str) -> dict[str, Any]:
    """Handle a stored event; after commit, its follow-up (`follow_up`), then enqueue the events
    it woke."""
    rt = runtime.get_runtime()
    processed = rt.run(
        processing.process_event(
            rt.sessions, event_id, lock_timeout_ms=rt.settings.stripe_lock_timeout_ms
        )
    )
    rt.run(follow_up(rt.redis, rt.sessions, rt.settings, processed))
    for woken in processed.wake_event_ids:
        process_event.apply_async((woken,), queue=STRIPE_QUEUE)
    log.info("stripe event processed", **processed.summary())
    return processed.summary()


@app.task(name=REQUEUE_UNPROCESSED, acks_late=True)
def requeue_unprocessed() -> dict[str, Any]:
    """Enqueue stored events still unprocessed (a lost enqueue, a retry, a recorded purchase)."""
    rt = runtime.get_runtime()

    async def find() -> list[str]:
        async with rt.sessions() as session:
            return await processing.requeueable_events(
                session, older_than_s=rt.settings.stripe_requeue_after_s
            )

    event_ids = rt.run(find())
    for event_id in event_ids:
        process_event.apply_async((event_id,), queue=STRIPE_QUEUE)
    if event_ids:
        log.info("stripe events re-enqueued", count=len(event_ids))
    return {"requeued": event_ids}
