"""Stripe deliveries at their worst, through the app to a real `stripe` worker: every event three
times in a shuffled order (refunds and disputes before their purchase), replays after processing,
forged, tampered, stale and future signatures among them, and a worker child killed mid-handler."""

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psutil
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.ops.db import session_scope
from metering.ops.models import CreditTransaction, StripeEvent, TransactionType
from metering.ops.settings import Settings
from metering.web import create_app
from tests.chaos.helpers import row_locked, waiting_on_a_lock
from tests.factories import create_user
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
from tests.support import eventually
from tests.usage.helpers import Sessions, balance, violations
from tests.web.helpers import serve
from tests.workers import Worker, running_worker

pytestmark = pytest.mark.slow

CREDITS = 10_000
"""Each purchase: 10,000 credits for 1,000 cents; a refund or dispute of N cents claws back 10 N."""
TOLERANCE_S = 300


@pytest.fixture(scope="module")
def worker(database_url: str, redis_prefix: str) -> Iterator[Worker]:
    env = {
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_LOCK_TIMEOUT_MS": "60000",
    }
    with running_worker("stripe", env=env) as running:
        yield running


@pytest.fixture
async def client(database_url: str, worker: Worker) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=database_url,
        stripe_webhook_secret=SecretStr(WEBHOOK_SECRET),
        stripe_webhook_tolerance_s=TOLERANCE_S,
    )
    async for client in serve(create_app(settings)):
        yield client


async def post(client: httpx.AsyncClient, body: str, signature: str) -> httpx.Response:
    return await client.post(
        "/webhooks/stripe", content=body.encode(), headers={"Stripe-Signature": signature}
    )


async def stored(sessions: Sessions, event_id: str) -> StripeEvent | None:
    async with session_scope(sessions) as session:
        return await session.get(StripeEvent, event_id)


def processed(sessions: Sessions, events: list[dict[str, Any]]) -> Any:
    async def check() -> bool:
        rows = [await stored(sessions, e["id"]) for e in events]
        return all(row is not None and row.processed_at is not None for row in rows)

    return check


async def purchases_of(sessions: Sessions, user_id: str) -> int:
    async with session_scope(sessions) as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(CreditTransaction)
                .where(
                    CreditTransaction.user_id == user_id,
                    CreditTransaction.type == TransactionType.PURCHASE,
                )
            )
            or 0
        )


async def test_replays_disorder_and_bad_signatures_end_in_the_exact_balances(
    client: httpx.AsyncClient, sessions: Sessions
) -> None:
    rng = random.Random(31)
    genuine: list[dict[str, Any]] = []
    expected: dict[str, int] = {}
    async with session_scope(sessions) as session:
        users = [await create_user(session) for _ in range(3)]
    for user_id in users:
        async with session_scope(sessions) as session:
            checkout = await record(session, checkout_session(user_id, CREDITS))
        payment = checkout["payment_intent"]
        dispute_id = new_id("dp")
        early = [
            event("charge.refunded", charge(payment, 1_000, 300)),
            event("charge.dispute.created", dispute(payment, 200, dispute_id=dispute_id)),
        ]
        late = [
            event("checkout.session.completed", checkout),
            event("checkout.session.async_payment_succeeded", checkout),
        ]
        genuine += early + late
        expected[user_id] = CREDITS - 3_000 - 2_000
    # Three deliveries of each, all at once, in an order where clawbacks often come first.
    deliveries = [e for e in genuine for _ in range(3)]
    rng.shuffle(deliveries)
    now = int(time.time())

    forged_purchase = event("checkout.session.completed", checkout_session(users[0], 10**6))
    bad = {
        "forged": _signed(forged_purchase, secret="whsec_not_the_endpoint_secret"),
        "stale": _signed(forged_purchase, timestamp=now - TOLERANCE_S - 5),
        "future": _signed(forged_purchase, timestamp=now + TOLERANCE_S + 5),
        "tampered": _tampered(event("checkout.session.completed", checkout_session(users[1], 10))),
    }
    async with session_scope(sessions) as session:
        skewed_checkout = await record(session, checkout_session(users[2], CREDITS))
    skewed = event("checkout.session.completed", skewed_checkout)
    expected[users[2]] += CREDITS
    genuine.append(skewed)

    responses = await asyncio.gather(
        *(post(client, body_of(e), sign(body_of(e))) for e in deliveries),
        *(post(client, body, signature) for body, signature in bad.values()),
        post(client, body_of(skewed), sign(body_of(skewed), timestamp=now + 60)),
    )
    genuine_answers = responses[: len(deliveries)] + responses[-1:]
    assert {r.status_code for r in genuine_answers} == {200}
    for response in responses[len(deliveries) : -1]:
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_webhook"
    assert await stored(sessions, forged_purchase["id"]) is None

    await eventually(processed(sessions, genuine), "every genuine event processed")
    # Replays of processed events, as Stripe's dashboard or a retry would send them.
    for evt in rng.sample(genuine, 5):
        response = await post(client, body_of(evt), sign(body_of(evt)))
        assert response.json()["duplicate"] is True
    for user_id in users:
        assert await balance(sessions, user_id) == expected[user_id]
        assert await purchases_of(sessions, user_id) == (2 if user_id == users[2] else 1)
    assert await violations(sessions) == []


async def test_a_handler_killed_midway_is_run_again_and_buys_once(
    client: httpx.AsyncClient, worker: Worker, engine: AsyncEngine, sessions: Sessions
) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session)
        checkout = await record(session, checkout_session(user_id, CREDITS))
    completed = event("checkout.session.completed", checkout)

    async with row_locked(engine, user_id):
        response = await post(client, body_of(completed), sign(body_of(completed)))
        assert response.status_code == 200

        async def handler_blocked() -> bool:
            return bool(await waiting_on_a_lock(engine))

        await eventually(handler_blocked, "the handler waiting on the buyer's row")
        # The pool child dies mid-handler; its task is rejected, redelivered and run again.
        (child,) = psutil.Process(worker.process.pid).children()
        child.kill()
    await eventually(processed(sessions, [completed]), "the second run")

    assert await balance(sessions, user_id) == CREDITS
    assert await purchases_of(sessions, user_id) == 1
    assert worker.process.poll() is None
    assert await violations(sessions) == []


def _signed(
    evt: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[str, str]:
    body = body_of(evt)
    return body, sign(body, secret=secret, timestamp=timestamp)


def _tampered(evt: dict[str, Any]) -> tuple[str, str]:
    """Signed, then its credits raised a thousandfold in transit."""
    body = body_of(evt)
    signature = sign(body)
    return body.replace('"credits": "10"', '"credits": "10000"'), signature
