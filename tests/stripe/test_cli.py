"""`metering stripe events` and `metering stripe replay` as an operator runs them."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ops import redis_keys
from metering.ops.db import session_scope
from metering.ops.models import StripeEvent, User
from metering.stripe import processing
from metering.stripe.webhooks import ReceivedEvent, store_event
from tests.factories import unique
from tests.stripe.deliveries import charge, checkout_session, dispute, event, new_id, record

METERING = str(Path(sys.executable).parent / "metering")


def metering(*args: str, bound_s: str = "3600") -> subprocess.CompletedProcess[str]:
    env = {key: os.environ[key] for key in ("DATABASE_URL", "REDIS_URL", "METERING_REDIS_PREFIX")}
    return subprocess.run(
        [METERING, "stripe", *args],
        env={
            **env,
            "PATH": "/usr/bin:/bin",
            "COLUMNS": "250",
            "STRIPE_AWAITING_PURCHASE_BOUND_S": bound_s,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def store(sessions: async_sessionmaker[AsyncSession], evt: dict[str, Any]) -> None:
    async with session_scope(sessions) as session:
        await store_event(session, ReceivedEvent(evt["id"], evt["type"], False, evt))


async def test_replay_processes_a_failed_event_and_what_it_wakes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    user_id = unique("user-not-yet")
    async with session_scope(sessions) as session:
        checkout = await record(session, checkout_session(user_id, 10_000))
    purchase = event("checkout.session.completed", checkout)
    refund = event("charge.refunded", charge(checkout["payment_intent"], 1_000, 1_000))
    await store(sessions, refund)
    await store(sessions, purchase)

    waiting = metering("replay", refund["id"])
    failed = metering("replay", purchase["id"])
    listed = json.loads(metering("events", "--failed", "--json", "--limit", "10000").stdout)
    table = metering("events", "--failed").stdout

    assert "awaiting_purchase" in waiting.stdout
    assert failed.returncode == 2
    assert "unknown_user" in failed.stderr
    rows = {r["id"]: r for r in listed}
    assert (rows[purchase["id"]]["outcome"], rows[purchase["id"]]["attempts"]) == ("failed", 1)
    assert rows[purchase["id"]]["processed_at"] is None
    assert "unknown_user" in rows[purchase["id"]]["last_error"]
    assert (rows[refund["id"]]["outcome"], rows[refund["id"]]["overdue"]) == (
        "awaiting_purchase",
        False,
    )
    assert purchase["id"] in table
    assert f"waiting for the purchase of payment {checkout['payment_intent']}" in table

    # The operator creates the missing user, and replays the purchase.
    async with session_scope(sessions) as session:
        await session.execute(
            insert(User).values(id=user_id, email=f"{user_id}@example.com", updated_at=func.now())
        )
    replayed = json.loads(metering("replay", purchase["id"], "--json").stdout)
    again = metering("replay", purchase["id"])

    assert [(r["event_id"], r["outcome"]) for r in replayed] == [
        (purchase["id"], "purchased"),
        (refund["id"], "clawed_back"),
    ]
    assert "already processed" in again.stdout
    async with session_scope(sessions) as session:
        user = await session.get(User, user_id)
        assert user is not None
        assert user.credits == 0


async def test_replay_of_a_purchase_rearms_the_low_balance_alert(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, redis_prefix: str, user_id: str
) -> None:
    crossed = redis_keys.low_balance_flag(redis_prefix, user_id)
    await redis.set(crossed, "1")
    async with session_scope(sessions) as session:
        purchase = event(
            "checkout.session.completed", await record(session, checkout_session(user_id, 10_000))
        )
    await store(sessions, purchase)

    replayed = metering("replay", purchase["id"])

    assert replayed.returncode == 0, replayed.stderr
    assert not await redis.exists(crossed)
    async with session_scope(sessions) as session:
        assert await session.scalar(select(User.credits).where(User.id == user_id)) == 10_000


async def test_events_waiting_past_the_bound_are_flagged_overdue(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    disputed = event("charge.dispute.created", dispute(new_id("pi"), 500))
    await store(sessions, disputed)
    assert "awaiting_purchase" in metering("replay", disputed["id"]).stdout

    within = json.loads(metering("events", "--failed", "--json", "--limit", "10000").stdout)
    async with session_scope(sessions) as session:
        await session.execute(
            update(StripeEvent)
            .where(StripeEvent.id == disputed["id"])
            .values(received_at=func.timezone("UTC", func.now()) - timedelta(seconds=3_601))
        )
    past = json.loads(metering("events", "--failed", "--json", "--limit", "10000").stdout)
    table = metering("events", "--failed", "--limit", "10000").stdout
    shorter = metering("events", "--failed", "--json", "--limit", "10000", bound_s="7200")

    assert [r["overdue"] for r in within if r["id"] == disputed["id"]] == [False]
    assert [r["overdue"] for r in past if r["id"] == disputed["id"]] == [True]
    assert "awaiting_purchase OVERDUE" in table
    assert [r["overdue"] for r in json.loads(shorter.stdout) if r["id"] == disputed["id"]] == [
        False
    ]


async def test_a_session_metering_did_not_create_is_quarantined_with_its_reason(
    sessions: async_sessionmaker[AsyncSession], user_id: str
) -> None:
    forged = event("checkout.session.completed", checkout_session(user_id, 10_000))
    await store(sessions, forged)

    result = metering("replay", forged["id"])
    listed = json.loads(metering("events", "--failed", "--json", "--limit", "10000").stdout)
    table = metering("events", "--failed", "--limit", "10000").stdout

    assert result.returncode == 2
    assert "unrecorded_session" in result.stderr
    (row,) = [r for r in listed if r["id"] == forged["id"]]
    assert (row["outcome"], row["processed_at"]) == ("quarantined", None)
    assert "no record of creating it" in row["last_error"]
    assert "quarantined" in table
    async with session_scope(sessions) as session:
        assert await session.scalar(select(User.credits).where(User.id == user_id)) == 0
        assert forged["id"] not in await processing.requeueable_events(session, older_than_s=0)


def test_replay_of_an_unknown_event_fails_clearly() -> None:
    result = metering("replay", "evt_unknown")

    assert result.returncode == 2
    assert "no stored Stripe event evt_unknown" in result.stderr
