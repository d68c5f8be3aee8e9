"""End to end: signed deliveries to the app, processed by a real worker on the `stripe` queue."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from metering.budget import halt
from metering.ops.db import session_scope
from metering.ops.models import CreditTransaction, StripeEvent, TransactionType, User
from metering.ops.settings import Settings
from metering.web import create_app
from tests.stripe.deliveries import (
    WEBHOOK_SECRET,
    body_of,
    charge,
    checkout_session,
    dispute,
    event,
    new_id,
    record,
    sign,
)
from tests.web.helpers import Queue, serve
from tests.workers import Worker, running_worker

pytestmark = pytest.mark.slow

SECRET_KEY = "sk_test_51WorkerSecretKey9876543210"
CREDITS = 10_000
CENTS = 1_000
WAIT_S = 90


@pytest.fixture(scope="module")
def worker(database_url: str, redis_prefix: str) -> Iterator[Worker]:
    env = {
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_LOCK_TIMEOUT_MS": "300",
    }
    with running_worker("stripe", env=env) as running:
        yield running


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, stripe_webhook_secret=SecretStr(WEBHOOK_SECRET))


@pytest.fixture
async def client(settings: Settings, worker: Worker) -> AsyncIterator[httpx.AsyncClient]:
    async for client in serve(create_app(settings)):
        yield client


async def deliver(client: httpx.AsyncClient, evt: dict[str, Any]) -> httpx.Response:
    body = body_of(evt)
    response = await client.post(
        "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body)}
    )
    assert response.status_code == 200, response.text
    return response


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(WAIT_S * 10):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


async def row_of(sessions: async_sessionmaker[AsyncSession], event_id: str) -> StripeEvent:
    async with session_scope(sessions) as session:
        row = await session.get(StripeEvent, event_id)
        assert row is not None
        return row


def processed(sessions: async_sessionmaker[AsyncSession], *events: dict[str, Any]):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        rows = [await row_of(sessions, evt["id"]) for evt in events]
        return all(row.processed_at is not None for row in rows)

    return check


async def ours(sessions: async_sessionmaker[AsyncSession], checkout: dict[str, Any]) -> Any:
    async with session_scope(sessions) as session:
        return await record(session, checkout)


async def balance(sessions: async_sessionmaker[AsyncSession], user_id: str) -> int:
    async with session_scope(sessions) as session:
        user = await session.get(User, user_id)
        assert user is not None
        return user.credits


async def test_purchase_duplicates_and_early_refund_and_dispute_end_the_same(
    client: httpx.AsyncClient,
    worker: Worker,
    sessions: async_sessionmaker[AsyncSession],
    redis: Redis,
    redis_prefix: str,
    user_id: str,
) -> None:
    await halt.raise_halt(redis, redis_prefix, user_id, ["exp-halted"], "balance")
    checkout = await ours(sessions, checkout_session(user_id, CREDITS))
    payment = checkout["payment_intent"]
    dispute_id = new_id("dp")
    refund = event("charge.refunded", charge(payment, CENTS, 300))
    disputed = event("charge.dispute.created", dispute(payment, 200, dispute_id=dispute_id))
    completed = event("checkout.session.completed", checkout)
    succeeded = event("checkout.session.async_payment_succeeded", checkout)

    for evt in (refund, disputed, completed, completed, succeeded, refund):
        await deliver(client, evt)
    await wait_for(processed(sessions, refund, disputed, completed, succeeded), "the events")

    assert await balance(sessions, user_id) == CREDITS - 3_000 - 2_000
    assert not await halt.is_halted(redis, redis_prefix, "exp-halted")
    async with session_scope(sessions) as session:
        purchases = await session.scalar(
            select(func.count())
            .select_from(CreditTransaction)
            .where(
                CreditTransaction.user_id == user_id,
                CreditTransaction.type == TransactionType.PURCHASE,
            )
        )
    assert purchases == 1

    won = event("charge.dispute.closed", dispute(payment, 200, "won", dispute_id=dispute_id))
    await deliver(client, won)
    await deliver(client, won)
    await wait_for(processed(sessions, won), "the closed dispute")
    assert await balance(sessions, user_id) == CREDITS - 3_000
    for secret in (SECRET_KEY, WEBHOOK_SECRET):
        assert secret not in "".join(worker.log)


async def test_a_handler_that_fails_is_retried_with_its_error_visible(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    user_id: str,
) -> None:
    completed = event(
        "checkout.session.completed", await ours(sessions, checkout_session(user_id, CREDITS))
    )

    async with engine.connect() as blocker:
        # Hold the buyer's row: the handler's ledger write times out on its lock and fails.
        await blocker.execute(
            text('SELECT id FROM "User" WHERE id = :id FOR UPDATE'), {"id": user_id}
        )
        await deliver(client, completed)

        async def failed_once() -> bool:
            row = await row_of(sessions, completed["id"])
            return row.attempts >= 1 and row.outcome == "retrying"

        await wait_for(failed_once, "a failed attempt")
        failed = await row_of(sessions, completed["id"])
        assert failed.processed_at is None
        assert failed.last_error is not None
        assert "lock timeout" in failed.last_error
        await blocker.rollback()

    await wait_for(processed(sessions, completed), "the retry")
    row = await row_of(sessions, completed["id"])
    assert row.outcome == "purchased"
    assert row.attempts >= 2
    assert await balance(sessions, user_id) == CREDITS


async def test_an_event_whose_enqueue_failed_is_processed_when_beat_requeues(
    settings: Settings,
    worker: Worker,
    sessions: async_sessionmaker[AsyncSession],
    user_id: str,
) -> None:
    completed = event(
        "checkout.session.completed", await ours(sessions, checkout_session(user_id, CREDITS))
    )
    async for client in serve(create_app(settings, enqueue=Queue(broken=True))):
        response = await deliver(client, completed)
    assert response.json()["enqueued"] is False

    from metering.tasks.app import app as celery

    async def requeued() -> bool:
        celery.send_task("metering.stripe.requeue_unprocessed")
        await asyncio.sleep(1)
        return await processed(sessions, completed)()

    await wait_for(requeued, "beat's re-enqueue")
    assert await balance(sessions, user_id) == CREDITS
